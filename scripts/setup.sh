#!/usr/bin/env bash
# Installs kefu into ./.venv on a fresh machine (Python 3.11+).
#   bash scripts/setup.sh          kefu and its runtime dependencies
#   bash scripts/setup.sh --test   also what the tests drive: the test extra (pytest, paho-mqtt,
#                                  gmqtt, amqtt, Playwright for Python), Mosquitto and Debian's
#                                  Chromium (apt-get, when running as root; otherwise it says
#                                  what to install)
# Idempotent: a second run only checks. Quiet unless something fails: the installers' output
# goes to .venv/setup.log, and its end is shown (with the path) when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: kefu needs Python 3.11 or newer ($PY is $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
log=.venv/setup.log
: > "$log"
quiet() {  # run a step with its output in the log; on failure show the log's end and stop
    if ! "$@" >> "$log" 2>&1; then
        echo "setup: failed: $*" >&2
        tail -n 40 "$log" >&2
        echo "setup: the whole output is in $log" >&2
        exit 1
    fi
}
quiet .venv/bin/python -m pip install -q --upgrade pip
quiet .venv/bin/python -m pip install -q -e ".$extra"
if [ -n "$extra" ]; then
    # System programs the tests drive: a real MQTT broker to compare against and bridge to,
    # and a real headless browser (Playwright never downloads one: it drives this Chromium).
    need=()
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    # A CJK font, so screenshots of Chinese conversations show text, not empty boxes.
    [ -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ] || need+=(fonts-wqy-zenhei)
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            quiet apt-get update -qq
            quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
        else
            echo "setup: please install with your package manager: ${need[*]}" >&2
            exit 1
        fi
    fi
fi
