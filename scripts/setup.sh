#!/usr/bin/env bash
# Installs kefu and everything its tests need into ./.venv, on a fresh machine.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# System packages the tests drive: a real MQTT broker to compare against and bridge to,
# and a real headless browser. Installed only when missing.
need=()
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
if [ "${KEFU_SKIP_BROWSER:-0}" != 1 ]; then
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "setup: please install with your package manager: ${need[*]}" >&2
        exit 1
    fi
fi
