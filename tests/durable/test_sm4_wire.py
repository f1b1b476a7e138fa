"""SM4 on the wire, end to end through `kefu serve`, with the keys `kefu keys new-device`
makes and the reference device (examples/sm4_device.py, paho-mqtt, no kefu code).

Uplinks: the device's envelopes are opened by kefu, so a plaintext subscriber (standing in
for the desk) reads the plaintext. Downlinks: that subscriber answers in plaintext and the
device receives them sealed with its own key. Bad envelopes (wrong key, truncated,
tampered tag, replayed counter) are refused (5.0: PUBACK 0x99; 3.1.1: dropped), never
passed on, counted per reason in /metrics and logged once per device per minute.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from durable_served import ROOT, WAIT, Client, Kefu, stop_all, write_config

EXAMPLE = ROOT / "examples" / "sm4_device.py"


@pytest.fixture(scope="module")
def device():
    spec = importlib.util.spec_from_file_location("sm4_device_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kefu_cli(*args: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "kefu.cli", *args], capture_output=True, text=True, cwd=str(cwd),
                         timeout=WAIT)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def provision(tmp_path: Path, config: Path, device_id: str) -> tuple[int, bytes]:
    out = kefu_cli("keys", "new-device", device_id, "--config", str(config), cwd=tmp_path)
    key_id = int(re.search(r"key id (0x[0-9a-f]{8})$", out, re.M).group(1), 16)
    key = bytes.fromhex(re.search(r"^key ([0-9a-f]{32})$", out, re.M).group(1))
    return key_id, key


def metric(base: str, name: str, **labels) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=WAIT) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.split()[-1])
    return 0.0


def next_up(desk: Client) -> bytes:
    """The next uplink the plaintext side read (its own answers on /down are skipped)."""
    while True:
        m = desk.messages.get(timeout=WAIT)
        if m.topic.endswith("/up"):
            return m.payload


class Raw:
    """A device-side paho client that sends whatever bytes the test wants."""

    def __init__(self, port: int, client_id: str, version) -> None:
        self.client = Client(port, client_id, version=version)
        self.codes: dict[int, int] = {}
        self.done = threading.Condition()
        self.client.c.on_publish = self._on_publish

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self.done:
            self.codes[mid] = reason_code.value
            self.done.notify_all()

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.client.c.publish(topic, payload, qos=1)
        with self.done:
            assert self.done.wait_for(lambda: info.mid in self.codes, WAIT)
            return self.codes[info.mid]


def test_reference_device_end_to_end_through_kefu_serve(tmp_path, device):
    master = tmp_path / "master.key"
    kefu_cli("keys", "new-master", str(master), cwd=tmp_path)
    config = write_config(tmp_path / "kefu.toml", {"path": str(tmp_path / "kefu.db"), "master_key_file": str(master)},
                          http=True, extra='[sm4]\ndevice_topics = ["d/#"]\n')
    key_id, key = provision(tmp_path, config, "dev-1")
    _, other_key = provision(tmp_path, config, "dev-2")
    kefu = Kefu(config).start()
    desk = Client(kefu.port, "desk")
    clients = [desk]
    try:
        desk.connect()
        desk.subscribe("d/#", qos=1)

        def answer(cl, ud, m):  # the plaintext side: reads uplinks, answers each on the device's down topic
            desk.messages.put(m)
            if m.topic.endswith("/up"):
                cl.publish(m.topic[:-3] + "/down", b"ack " + m.payload, qos=1)

        desk.c.on_message = answer
        state = device.CounterState(str(tmp_path / "dev-1.state"))
        ups = [b'{"seq": 0, "temp": 21.5}', "温度 22.0".encode()]
        downs = device.run("127.0.0.1", kefu.port, "dev-1", key, key_id, state, ups, "d/dev-1/up", "d/dev-1/down",
                           wait_downlinks=len(ups), timeout=WAIT)
        assert downs == [b"ack " + u for u in ups]  # sealed for dev-1, opened by the device
        seen = [desk.messages.get(timeout=WAIT) for _ in range(2 * len(ups))]
        assert sorted((m.topic, m.payload) for m in seen) == sorted(
            [("d/dev-1/up", u) for u in ups] + [("d/dev-1/down", b"ack " + u) for u in ups])  # plaintext inside

        # bad input from the device's own client id, MQTT 5.0: refused with 0x99, never passed on
        raw = Raw(kefu.port, "dev-1", mqtt.MQTTv5)
        clients.append(raw.client)
        raw.client.connect()
        topic = "d/dev-1/up"
        good = device.seal(key, key_id, state.take(), "dev-1", topic, b"fine")
        bad = {
            "wrong key": device.seal(other_key, key_id, state.take(), "dev-1", topic, b"x"),
            "truncated": good[:20],
            "tampered tag": good[:-1] + bytes([good[-1] ^ 1]),
        }
        for why, payload in bad.items():
            assert raw.publish(topic, payload) == 0x99, why
        assert raw.publish(topic, good) == 0  # the untouched original still opens
        assert raw.publish(topic, good) == 0x99  # replayed counter
        assert next_up(desk) == b"fine"
        stop_all([raw.client])
        # MQTT 3.1.1: cannot be told, so it is dropped (acknowledged, not passed on)
        raw3 = Raw(kefu.port, "dev-1", mqtt.MQTTv311)
        clients.append(raw3.client)
        raw3.client.connect()
        assert raw3.publish(topic, good) == 0
        last = device.seal(key, key_id, state.take(), "dev-1", topic, b"last")
        assert raw3.publish(topic, last) == 0
        assert next_up(desk) == b"last"  # nothing in between: the replay was dropped
        for reason, n in {"auth_failed": 2, "malformed": 1, "replay": 2}.items():
            assert metric(kefu.http, "kefu_sm4_rejected_total", reason=reason) == n, reason
    finally:
        stop_all(clients)
        kefu.stop()
    log = kefu.log.read_text()
    assert log.count("rejected SM4 envelope from 'dev-1'") == 1, log  # once per device per minute


def test_sm4_needs_the_master_key(tmp_path):
    config = write_config(tmp_path / "kefu.toml", {"path": str(tmp_path / "kefu.db"), "master_key_env": "KEFU_T_NONE"},
                          extra='[sm4]\ndevice_topics = ["d/#"]\n')
    env = {k: v for k, v in os.environ.items() if k != "KEFU_T_NONE"}
    out = subprocess.run([sys.executable, "-m", "kefu.cli", "serve", "--config", str(config)], capture_output=True,
                         text=True, timeout=WAIT, env=env, cwd=str(tmp_path))
    assert out.returncode == 1
    assert "sm4.device_topics needs the master key" in out.stderr and "Traceback" not in out.stderr


def test_a_device_following_the_doc_reaches_the_desk(tmp_path, device):
    """docs/sm4-envelope.md's setup: [sm4] device_topics = ["kefu/c/#"] and the reference device
    on the desk's conversation topics. Its sealed message opens a conversation; the desk's
    answers (the conversation it opened, the bot's message) come back sealed."""
    import json

    doc = (ROOT / "docs" / "sm4-envelope.md").read_text(encoding="utf-8")
    topics = re.search(r'^device_topics = (\[.*?\])', doc, re.M).group(1)
    master = tmp_path / "master.key"
    kefu_cli("keys", "new-master", str(master), cwd=tmp_path)
    from kefu.broker.auth import hash_password

    assert '[[auth.users]]\nusername = "dev-1"' in doc  # the doc has the device log in as itself
    users = f'[[auth.users]]\nusername = "dev-1"\npassword_hash = "{hash_password("dev-1-pass", log_n=4)}"\n'
    config = write_config(tmp_path / "kefu.toml", {"path": str(tmp_path / "kefu.db"), "master_key_file": str(master)},
                          http=True, extra=f"[sm4]\ndevice_topics = {topics}\n{users}")
    key_id, key = provision(tmp_path, config, "dev-1")
    kefu = Kefu(config).start()
    dev = Client(kefu.port, "dev-1")
    try:
        up, downs = device.desk_topics("dev-1")
        assert up == "kefu/c/dev-1/main/in" and f"`{up}`" in doc
        dev.c.username_pw_set("dev-1", "dev-1-pass")
        dev.connect()
        for topic in downs:  # .../out and .../events
            assert [getattr(rc, "value", rc) for rc in dev.subscribe(topic)] == [1], topic  # granted, QoS 1
        state = device.CounterState(str(tmp_path / "dev-1.state"))
        msg = json.dumps({"type": "message", "text": "我的风扇很吵 my fan is noisy"}).encode()
        dev.c.publish(up, device.seal(key, key_id, state.take(), "dev-1", up, msg), qos=1)
        frames: list[dict] = []  # every downlink opened with the device's key: sealed by kefu for it
        while not (any(f.get("type") == "conversation" and f.get("event") == "created" for f in frames)
                   and any(f.get("type") == "message" and f["message"]["author"]["kind"] == "bot" for f in frames)):
            m = dev.messages.get(timeout=WAIT)
            _, counter, payload = device.open_envelope(key, "dev-1", m.topic, m.payload)
            assert state.accept_downlink(counter)
            frames.append(json.loads(payload))
        created = next(f for f in frames if f.get("type") == "conversation" and f.get("event") == "created")
        assert (created["conversation"]["customer"], created["conversation"]["thread"]) == ("dev-1", "main")
        bot = next(f for f in frames if f.get("type") == "message" and f["message"]["author"]["kind"] == "bot")
        assert bot["message"]["conversation"] == created["conversation"]["id"]
    finally:
        stop_all([dev])
        kefu.stop()
    assert "rejected SM4 envelope" not in kefu.log.read_text()
