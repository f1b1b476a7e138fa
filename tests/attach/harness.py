"""Real processes for the attach-mode tests: Mosquitto as the external broker, ``kefu serve``
in external mode, paho devices. Nothing sleeps to synchronise: lines, MQTT events and HTTP
answers are waited for with deadlines."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

WAIT = 30.0
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "attach-operator-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(pred, what: str, wait: float = WAIT):
    """Re-check an observable condition of another process until it holds (bounded)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)  # polling another process's state, not synchronising on time
    raise AssertionError(f"timed out waiting for {what}")


class Mosquitto:
    def __init__(self, binary: str, folder: Path, *, acl: Path | None = None, users: dict | None = None) -> None:
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        conf = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                "max_queued_messages 10000", "log_dest stderr"]
        if os.geteuid() == 0:  # started as root Mosquitto becomes user "mosquitto", who cannot write here
            conf.append("user root")
        if users:
            pw = folder / "passwd"
            pw.write_text("")
            for u, p in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), u, p], check=True)
            conf += [f"password_file {pw}", "allow_anonymous true"]
        else:
            conf.append("allow_anonymous true")
        if acl:
            conf.append(f"acl_file {acl}")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.log = folder / "mosquitto.log"
        self.proc = None

    def start(self) -> "Mosquitto":
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=self._logf, stderr=self._logf)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        until(up, "mosquitto to listen")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves its persistence file
            self.proc.wait(timeout=WAIT)
        self._logf.close()


def _toml(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def kefu_config(path: Path, broker_port: int, client_id: str, *, extra: dict | None = None) -> Path:
    import hashlib

    sections = {
        "listeners.mqtt": {"host": "127.0.0.1", "port": 0},
        "listeners.ws": {"enabled": False},
        "listeners.http": {"host": "127.0.0.1", "port": 0},
        "mqtt": {"sys_interval": 0},
        "nlp": {"enabled": False},
        "metrics": {"enabled": False},
        "broker": {"mode": "external", "host": "127.0.0.1", "port": broker_port, "client_id": client_id,
                   "reconnect_min": 0.1, "reconnect_max": 0.5, "keepalive": 5},
        "storage": {"backend": "sqlite", "path": str(path.parent / f"{client_id}.db")},
    }
    for k, v in (extra or {}).items():
        sections.setdefault(k, {}).update(v)
    lines = []
    for name, kv in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in kv.items()]
    lines += ["[[api.tokens]]", 'name = "test"', f'token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"',
              'role = "operator"']
    path.write_text("\n".join(lines) + "\n")
    return path


class Kefu:
    """``kefu serve`` in attach mode as a child process."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.http = ""
        self.attached = False
        self.wait_ready = True
        self.lines: queue.Queue = queue.Queue()
        self.log = config.with_suffix(".log")
        self.proc = None

    def start(self) -> "Kefu":
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kefu.cli", "serve", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=self._logf, text=True, cwd=str(self.config.parent))
        threading.Thread(target=self._read, daemon=True).start()
        try:
            return self._started()
        except BaseException:
            self.stop()  # never leave a kefu running behind a failed start
            raise

    def _started(self) -> "Kefu":
        while not (self.http and self.attached):
            try:
                line = self.lines.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"kefu did not start; log:\n{self.log.read_text()}") from None
            if line is None:
                raise AssertionError(f"kefu exited ({self.proc.wait()}); log:\n{self.log.read_text()}")
            assert "MQTT listening" not in line, line  # attach mode opens no MQTT listener of its own
            if line.startswith("kefu: attaching to the external broker"):
                self.attached = True
            if m := re.match(r"kefu: HTTP API on (http://\S+)/api/v1", line):
                self.http = m.group(1)
        if self.wait_ready:
            until(lambda: self.ready()[1]["checks"].get("broker"), "kefu to attach to the external broker")
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def get(self, path: str) -> tuple[int, dict]:
        req = urllib.request.Request(self.http + path, headers={"api_access_token": TOKEN})
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.http + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"api_access_token": TOKEN, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def conversations(self, customer: str | None = None) -> list[dict]:
        q = f"?customer={customer}" if customer else ""
        status, body = self.get("/api/v1/conversations" + q)
        assert status == 200, body
        return body["data"]["payload"]

    def messages(self, conv: str) -> list[dict]:
        status, body = self.get(f"/api/v1/conversations/{conv}/messages?limit=200")
        assert status == 200, body
        return body["data"]["payload"]

    def ready(self) -> tuple[int, dict]:
        return self.get("/readyz")

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


class Device:
    """A paho client on the external broker, with blocking, time-limited helpers."""

    def __init__(self, port: int, client_id: str, *, username: str | None = None, password: str | None = None,
                 version=mqtt.MQTTv311) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
        if username:
            self.c.username_pw_set(username, password)
        self.v5 = version == mqtt.MQTTv5
        self.connects: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.c.on_connect = lambda cl, ud, flags, rc, props=None: self.connects.put(rc)
        self.c.on_subscribe = lambda cl, ud, mid, rcs, props=None: self.subacks.put(rcs)
        self.c.on_message = lambda cl, ud, m: self.messages.put(m)
        self.port = port

    def connect(self) -> "Device":
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        rc = self.connects.get(timeout=WAIT)
        assert rc == 0, rc
        return self

    def subscribe(self, topic: str, qos: int = 1):
        self.c.subscribe(topic, qos)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload, qos: int = 1):
        info = self.c.publish(topic, payload if isinstance(payload, bytes) else json.dumps(payload), qos=qos)
        info.wait_for_publish(WAIT)
        assert info.is_published()
        return info

    def next(self, wait: float = WAIT):
        return self.messages.get(timeout=wait)

    def stop(self) -> None:
        try:
            self.c.disconnect()
        except Exception:  # noqa: BLE001 - the broker may be gone
            pass
        self.c.loop_stop()
