"""`kefu serve` as a subprocess: prints its addresses, stops within 2 s on SIGTERM/SIGINT,
and a port in use is one line naming the port and the config key."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from realclients import Paho


def _write_config(tmp_path, port: int) -> str:
    path = tmp_path / "kefu.toml"
    path.write_text(f'[listeners.mqtt]\nhost = "127.0.0.1"\nport = {port}\n\n[mqtt]\nsys_interval = 0\n'
                    '[listeners.ws]\nenabled = false\n[listeners.http]\nenabled = false\n'
                    f'[storage]\npath = "{tmp_path / "kefu.db"}"\n')
    return str(path)


def _start(config: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kefu.cli", "serve", "--config", config],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_addresses_and_stops_within_2s(tmp_path, sig):
    proc = _start(_write_config(tmp_path, 0))
    try:
        line = proc.stdout.readline()
        m = re.fullmatch(r"kefu: MQTT listening on mqtt://127\.0\.0\.1:(\d+)\n", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line
        port = int(m.group(1))
        assert port != 0
        client = Paho(port, "cli-check", 5)
        flags, rc = client.connect()
        assert rc == 0
        t0 = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=5)
        elapsed = time.monotonic() - t0
        assert elapsed < 2.0, f"took {elapsed:.2f}s to stop"
        assert proc.returncode == 0
        assert client.disconnects.get(timeout=5).value == 0x8B  # server shutting down
        client.c.loop_stop()
        err = proc.stderr.read()
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _start(_write_config(tmp_path, port))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    # Besides the start-up warning that no [[agents]] can take a handoff (kefu/checks.py): one line.
    assert [ln for ln in err.strip().splitlines() if "WARNING" not in ln] == [
        f"kefu: cannot listen on 127.0.0.1:{port} (address in use): set listeners.mqtt.port to a free port "
        "(0: any free one) in a config file and start with `kefu serve --config FILE` (README: Quick start)"
    ]
    assert "Traceback" not in err and out == ""
