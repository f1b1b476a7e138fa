#!/bin/sh
# Build a Mosquitto broker that can serve MQTT over WebSocket, as a benchmark peer for
# benchmarks/ws_bench.py. Prints the binary's path on stdout (the last line); progress
# goes to stderr. Idempotent: a second run finds the binary, checks it and prints it.
#
#     benchmarks/build_mosquitto_ws.sh              # -> benchmarks/.peers/mosquitto-ws/sbin/mosquitto
#     benchmarks/build_mosquitto_ws.sh /opt/mosquitto-ws
#
# Why a build at all: Debian 12's mosquitto 2.0.11 is configured with WITH_WEBSOCKETS=ON,
# but Mosquitto 2.0 learns the WebSocket listener's socket only through libwebsockets'
# "external poll" callbacks, and Debian's libwebsockets 4.1.6 is built without
# LWS_WITH_EXTERNAL_POLL. So `protocol websockets` fails with "Unable to start any
# listening sockets". This script takes both source packages from Debian (apt-get
# source, the same versions as the distribution's binaries), builds libwebsockets as a
# static library with LWS_WITH_EXTERNAL_POLL=ON, and links only the broker against it.
# Nothing is installed system-wide except the build tools from apt; the sources and the
# build stay under PREFIX/build (benchmarks/.peers/ is git-ignored).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${1:-${MOSQUITTO_WS_PREFIX:-$ROOT/benchmarks/.peers/mosquitto-ws}}
case $PREFIX in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
BIN=$PREFIX/sbin/mosquitto
WORK=$PREFIX/build
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

say() { echo "build_mosquitto_ws: $*" >&2; }
die() { say "error: $*"; exit 1; }

# A WebSocket listener on a loopback port must start (Mosquitto prints "running") and
# the port must not be one that is taken; try a few ports.
check_ws() {
    conf=$(mktemp)
    for port in 18931 28931 38931 48931; do
        printf 'listener %s 127.0.0.1\nprotocol websockets\nallow_anonymous true\n' "$port" >"$conf"
        out=$(timeout 2 "$1" -c "$conf" -v 2>&1 || true)
        case $out in
            *"version 2"*running*) rm -f "$conf"; return 0 ;;
            *"Address already in use"*) continue ;;
            *) break ;;
        esac
    done
    rm -f "$conf"
    say "$1 did not start a WebSocket listener: $(echo "$out" | tail -n 1)"
    return 1
}

if [ -x "$BIN" ] && check_ws "$BIN"; then
    say "already built"
    echo "$BIN"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then SUDO=; else
    command -v sudo >/dev/null || die "apt-get needs root: run as root or install sudo"
    SUDO=sudo
fi
command -v apt-get >/dev/null || die "this script uses Debian's apt-get and its source packages"

# deb-src for the suites the machine already uses, if none is configured.
if ! apt-get source --print-uris mosquitto >/dev/null 2>&1; then
    . /etc/os-release
    suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
    list=/etc/apt/sources.list.d/kefu-bench-deb-src.sources
    say "no deb-src configured; adding $list for $suite"
    printf '%s\n' \
        "Types: deb-src" "URIs: http://deb.debian.org/debian" "Suites: $suite $suite-updates" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" \
        "Types: deb-src" "URIs: http://deb.debian.org/debian-security" "Suites: $suite-security" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" \
        | $SUDO tee "$list" >/dev/null
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update >&2
fi

say "installing build tools"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
    build-essential cmake pkg-config dpkg-dev libssl-dev >&2

mkdir -p "$WORK"
cd "$WORK"
for pkg in mosquitto libwebsockets; do
    if ! ls -d "$pkg"-[0-9]*/ >/dev/null 2>&1; then
        say "apt-get source $pkg"
        apt-get source "$pkg" >&2
    fi
done
MOSQ_SRC=$(ls -d "$WORK"/mosquitto-[0-9]*/ | tail -n 1)
LWS_SRC=$(ls -d "$WORK"/libwebsockets-[0-9]*/ | tail -n 1)

say "building libwebsockets (static, LWS_WITH_EXTERNAL_POLL=ON) from $LWS_SRC"
rm -rf "$WORK/lws-build" "$WORK/lws"
mkdir -p "$WORK/lws-build"
cmake -S "$LWS_SRC" -B "$WORK/lws-build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$WORK/lws" -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DCMAKE_C_FLAGS=-Wno-deprecated-declarations -DDISABLE_WERROR=ON \
    -DLWS_WITH_EXTERNAL_POLL=ON -DLWS_WITH_SHARED=OFF -DLWS_WITH_STATIC=ON \
    -DLWS_WITHOUT_TESTAPPS=ON -DLWS_WITH_MINIMAL_EXAMPLES=OFF \
    -DLWS_WITH_LIBEV=OFF -DLWS_WITH_LIBUV=OFF -DLWS_WITH_GLIB=OFF -DLWS_WITH_EVLIB_PLUGINS=OFF \
    -DLWS_WITH_ZLIB=OFF -DLWS_WITHOUT_EXTENSIONS=ON -DLWS_IPV6=ON -DLWS_UNIX_SOCK=ON >&2
cmake --build "$WORK/lws-build" -j "$JOBS" >&2
cmake --install "$WORK/lws-build" >&2
grep -q '^#define LWS_WITH_EXTERNAL_POLL' "$WORK/lws/include/lws_config.h" \
    || die "libwebsockets was built without LWS_WITH_EXTERNAL_POLL"

say "building the mosquitto broker from $MOSQ_SRC"
rm -rf "$WORK/mosq-build"
# -I first so our lws headers win over a libwebsockets-dev in /usr/include.
cmake -S "$MOSQ_SRC" -B "$WORK/mosq-build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="-I$WORK/lws/include" -Dlibwebsockets_DIR="$WORK/lws/lib/cmake/libwebsockets" \
    -DWITH_WEBSOCKETS=ON -DWITH_BUNDLED_DEPS=ON -DDOCUMENTATION=OFF -DWITH_CLIENTS=OFF \
    -DWITH_APPS=OFF -DWITH_PLUGINS=OFF -DWITH_CJSON=OFF -DWITH_SYSTEMD=OFF -DWITH_DLT=OFF \
    -DUSE_LIBWRAP=OFF -DWITH_SRV=OFF >&2
cmake --build "$WORK/mosq-build" --target mosquitto -j "$JOBS" >&2

mkdir -p "$PREFIX/sbin"
install -m 755 "$WORK/mosq-build/src/mosquitto" "$BIN"
check_ws "$BIN" || die "the built broker cannot serve WebSocket"
say "built $("$BIN" -h 2>&1 | head -n 1), WebSocket listener checked"
echo "$BIN"
