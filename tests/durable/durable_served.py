"""``kefu serve`` as a child process for the end-to-end durability tests.

``Kefu(config_path).start()`` runs it, reads the addresses it prints (MQTT port, HTTP
base URL), keeps its log in a file (a full stderr pipe would stall it), and can stop it
gracefully or with SIGKILL. Nothing sleeps to synchronise: lines and MQTT events are
waited for with timeouts.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

WAIT = 30.0
ROOT = Path(__file__).resolve().parents[2]


def _toml(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def write_config(path: Path, storage: dict, *, http: bool = False, mqtt: dict | None = None, extra: str = "") -> Path:
    lines = ['[listeners.mqtt]', 'host = "127.0.0.1"', 'port = 0', '[listeners.ws]', 'enabled = false',
             '[listeners.http]', f'enabled = {"true" if http else "false"}', 'host = "127.0.0.1"', 'port = 0',
             '[desk]', f'enabled = {"true" if http else "false"}', '[nlp]', 'enabled = false',
             '[mqtt]', 'sys_interval = 0']
    lines += [f"{k} = {_toml(v)}" for k, v in (mqtt or {}).items()]
    lines.append("[storage]")
    lines += [f"{k} = {_toml(v)}" for k, v in storage.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


class Kefu:
    def __init__(self, config: Path, env: dict | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.http = ""
        self.lines: queue.Queue = queue.Queue()
        self.log = config.with_suffix(f".{os.getpid()}.{id(self)}.log")

    def start(self) -> "Kefu":
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kefu.cli", "serve", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=self._logf, text=True, cwd=str(self.config.parent),
                                     env=self.env)
        threading.Thread(target=self._read, daemon=True).start()
        while not self.port or (self._wants_http() and not self.http):
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"kefu did not start; log:\n{self.log.read_text()}") from None
            if line is None:
                raise AssertionError(f"kefu exited ({self.proc.wait()}); log:\n{self.log.read_text()}")
            if m := re.match(r"kefu: MQTT listening on mqtt://127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
            if m := re.match(r"kefu: HTTP API on (http://\S+)/api/v1", line):
                self.http = m.group(1)
        return self

    def _wants_http(self) -> bool:
        return "[listeners.http]\nenabled = true" in self.config.read_text()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT)
        self._logf.close()

    def stop(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._logf.closed:
            self._logf.close()
        return self.proc.returncode


class Client:
    """paho-mqtt with blocking, time-limited helpers (callbacks feed queues)."""

    def __init__(self, port: int, client_id: str, *, clean: bool = True, version=mqtt.MQTTv311,
                 inflight: int = 20) -> None:
        kw = {"clean_session": clean} if version != mqtt.MQTTv5 else {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, **kw)
        self.c.max_inflight_messages_set(inflight)
        self.connects: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.acked = 0
        self.c.on_connect = lambda cl, ud, flags, rc, props=None: self.connects.put((flags, rc))
        self.c.on_subscribe = lambda cl, ud, mid, rcs, props=None: self.subacks.put(rcs)
        self.c.on_message = lambda cl, ud, m: self.messages.put(m)
        self.c.on_publish = self._on_publish
        self.port = port

    def _on_publish(self, *a) -> None:
        self.acked += 1

    def connect(self, **kw):
        self.c.connect("127.0.0.1", self.port, **kw)
        self.c.loop_start()
        flags, rc = self.connects.get(timeout=WAIT)
        assert rc == 0, rc
        return flags

    def subscribe(self, topic: str, qos: int = 1):
        self.c.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def stop(self) -> None:
        stop_all([self])


def stop_all(clients) -> None:
    """Disconnect every client first (a client whose server died may be waiting to
    reconnect: disconnect() ends that), then join their network threads."""
    for c in clients:
        try:
            c.c.disconnect()
        except Exception:  # noqa: BLE001 - the server may be gone
            pass
    for c in clients:
        c.c.loop_stop()
