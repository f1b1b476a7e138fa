"""Attach mode against a real Mosquitto: devices on the external broker, ``kefu serve`` in
``[broker] mode = "external"`` as a child process (issue 16).

* a device's message reaches the desk through the shared subscription, the conversation
  exists, and the agent's reply reaches the device on the external broker;
* two kefu nodes in one share group split the customer messages: each handled once;
* the external broker restarted: /readyz and the log say so, kefu reconnects by itself,
  and every message acknowledged to the devices reaches the desk, once, in order;
* one node with a plain subscription gets what arrived while it and the broker were away;
* kefu killed with kill -9 mid-stream: nothing the broker acknowledged is lost;
* TLS to the broker with its own CA; a certificate for another name is refused and logged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Device, Kefu, Mosquitto, kefu_config, until  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def broker(tmp_path, mosquitto_bin):
    m = Mosquitto(mosquitto_bin, tmp_path).start()
    yield m
    m.stop()


@pytest.mark.parametrize("version", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["device-3.1.1", "device-5"])
def test_device_message_reaches_the_desk_and_the_reply_reaches_the_device(tmp_path, broker, version):
    kefu = Kefu(kefu_config(tmp_path / "a.toml", broker.port, "kefu-a")).start()
    dev = Device(broker.port, "dev-1", version=version).connect()
    try:
        status, body = kefu.ready()
        assert status == 200 and body["checks"]["broker"] is True, body
        dev.subscribe("kefu/c/anon:dev-1/main/out")
        dev.publish("kefu/c/anon:dev-1/main/in", {"type": "message", "text": "my heater shows E4"})
        convs = until(lambda: kefu.conversations("anon:dev-1"), "the conversation on the desk")
        assert len(convs) == 1
        conv = convs[0]["id"]
        msgs = until(lambda: kefu.messages(conv), "the message in the transcript")
        assert any("my heater shows E4" in json.dumps(m, ensure_ascii=False) for m in msgs), msgs
        status, body = kefu.post(f"/api/v1/conversations/{conv}/messages", {"content": "A technician comes at 10."})
        assert status in (200, 201), body
        while True:  # the desk may also have sent system messages on out
            m = dev.next()
            if "A technician comes at 10." in m.payload.decode():
                break
        assert m.topic == "kefu/c/anon:dev-1/main/out"
    finally:
        dev.stop()
        assert kefu.stop() == 0


def test_two_nodes_share_the_subscription_and_each_message_is_handled_once(tmp_path, broker):
    a = Kefu(kefu_config(tmp_path / "a.toml", broker.port, "kefu-a")).start()
    b = Kefu(kefu_config(tmp_path / "b.toml", broker.port, "kefu-b")).start()
    dev = Device(broker.port, "fleet").connect()
    n = 20
    try:
        for i in range(n):
            dev.publish(f"kefu/c/dev-{i}/main/in", {"type": "message", "text": f"hello {i}"})

        def handled():
            got = {c["customer"] for c in a.conversations()}, {c["customer"] for c in b.conversations()}
            return got if len(got[0]) + len(got[1]) >= n else None

        on_a, on_b = until(handled, "every message on one of the nodes")
        assert not on_a & on_b, "a message was handled by both nodes"
        assert on_a | on_b == {f"dev-{i}" for i in range(n)}
        assert on_a and on_b, "Mosquitto shares round-robin: both nodes take some"
        for node in (a, b):
            for c in node.conversations():
                assert len(node.messages(c["id"])) >= 1
    finally:
        dev.stop()
        assert a.stop() == 0 and b.stop() == 0


def _texts(kefu: Kefu, customer: str, want: list[str]):
    convs = kefu.conversations(customer)
    if not convs:
        return None
    got = [m["text"] for m in kefu.messages(convs[0]["id"]) if m["text"] in want]
    return got if len(got) >= len(want) else None


def test_external_broker_restart_is_reported_and_recovered(tmp_path, broker):
    kefu = Kefu(kefu_config(tmp_path / "a.toml", broker.port, "kefu-a")).start()
    try:
        dev = Device(broker.port, "dev-7", username="dev-7").connect()
        for i in range(3):
            dev.publish("kefu/c/dev-7/main/in", {"type": "message", "text": f"before {i}"})
        dev.stop()
        broker.stop()
        status, body = until(lambda: (r := kefu.ready())[0] == 503 and r, "/readyz to say the broker is down")
        assert body["checks"]["broker"] is False
        assert body["broker"]["address"] == f"mqtt://127.0.0.1:{broker.port}" and body["broker"]["reason"]
        until(lambda: "is down" in kefu.log.read_text(), "the log to say the broker is down")
        broker.start()
        until(lambda: kefu.ready()[0] == 200, "/readyz to recover")
        assert "is back after" in kefu.log.read_text()
        dev = Device(broker.port, "dev-7", username="dev-7").connect()
        for i in range(5):
            dev.publish("kefu/c/dev-7/main/in", {"type": "message", "text": f"after {i}"})
        dev.stop()
        want = [f"before {i}" for i in range(3)] + [f"after {i}" for i in range(5)]
        # every message acknowledged to the device is in the transcript, once, in order
        assert until(lambda: _texts(kefu, "dev-7", want), "every acknowledged message") == want
    finally:
        assert kefu.stop() == 0


def test_one_node_without_share_group_gets_what_arrived_while_it_and_the_broker_were_away(tmp_path, broker):
    """Mosquitto keeps a persistent session's plain subscription across its own restart (not a
    shared one): with ``share_group = ""`` a single node misses nothing the broker acknowledged."""
    config = kefu_config(tmp_path / "a.toml", broker.port, "kefu-solo", extra={"broker": {"share_group": ""}})
    kefu = Kefu(config).start()
    assert kefu.stop() == 0  # the persistent session (its subscriptions) stays on the broker
    dev = Device(broker.port, "dev-8", username="dev-8").connect()
    for i in range(4):
        dev.publish("kefu/c/dev-8/main/in", {"type": "message", "text": f"away {i}"})
    dev.stop()
    broker.stop()
    broker.start()
    kefu = Kefu(config).start()
    try:
        want = [f"away {i}" for i in range(4)]
        assert until(lambda: _texts(kefu, "dev-8", want), "the messages kept by the broker") == want
        assert "session resumed" in kefu.log.read_text()
    finally:
        assert kefu.stop() == 0


def test_kefu_killed_mid_stream_loses_nothing_the_broker_acknowledged(tmp_path, broker):
    """kill -9 while devices talk: what kefu had not committed it had not acknowledged, so
    Mosquitto keeps it in kefu's persistent session and hands it over after the restart."""
    config = kefu_config(tmp_path / "a.toml", broker.port, "kefu-a")
    kefu = Kefu(config).start()
    n_dev, n_msg = 5, 40
    devs = [Device(broker.port, f"k{i}", username=f"k{i}").connect() for i in range(n_dev)]
    want = {f"k{i}": [f"m{j}" for j in range(n_msg)] for i in range(n_dev)}

    def committed() -> dict[str, list[str]]:
        out = {}
        for c in kefu.conversations():
            out[c["customer"]] = [m["text"] for m in kefu.messages(c["id"]) if m["author"]["kind"] == "customer"]
        return out

    try:
        infos = []
        for j in range(n_msg):
            for i, d in enumerate(devs):
                infos.append(d.c.publish(f"kefu/c/k{i}/main/in", f"m{j}", qos=1))
            if j == n_msg // 4:  # some committed, many still on their way
                until(lambda: sum(map(len, committed().values())) >= n_dev * 5, "a first part committed")
                kefu.kill9()
        for info in infos:  # Mosquitto acknowledged every one to the devices while kefu was dead
            info.wait_for_publish(30)
            assert info.is_published()
        kefu = Kefu(config).start()

        def complete():
            got = committed()
            return got if all(set(want[k]) <= set(got.get(k, ())) for k in want) else None

        got = until(complete, "every acknowledged message in the transcripts")
        for k in want:  # nothing lost, in order; a message committed just before the kill whose
            # PUBACK never left may come twice (at least once, not exactly once, across a kill -9)
            firsts = list(dict.fromkeys(got[k]))
            assert firsts == want[k], (k, got[k])
            assert len(got[k]) - len(want[k]) <= 20, got[k]
    finally:
        for d in devs:
            d.stop()
        assert kefu.stop() == 0


def _certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 named "broker.test" (openssl)."""
    import subprocess

    ca_key, ca, key, csr, crt = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=kefu test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=broker.test")
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=DNS:broker.test\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(crt), "-days", "2", "-extfile", str(ext))
    return ca, crt, key


def test_attach_over_tls_verifies_the_broker_certificate(tmp_path, mosquitto_bin):
    ca, crt, key = _certs(tmp_path)
    m = Mosquitto(mosquitto_bin, tmp_path)
    m.conf.write_text(m.conf.read_text() + f"cafile {ca}\ncertfile {crt}\nkeyfile {key}\n")
    m.start()
    try:
        tls = {"tls": True, "cafile": str(ca), "server_name": "broker.test"}
        kefu = Kefu(kefu_config(tmp_path / "a.toml", m.port, "kefu-tls", extra={"broker": tls})).start()
        try:
            status, body = kefu.ready()
            assert status == 200 and body["broker"]["address"] == f"mqtts://127.0.0.1:{m.port}"
        finally:
            assert kefu.stop() == 0
        # the wrong name: the certificate does not match, kefu says so and is not ready
        wrong = Kefu(kefu_config(tmp_path / "b.toml", m.port, "kefu-tls2",
                                 extra={"broker": {**tls, "server_name": "other.test"}}))
        wrong.wait_ready = False
        wrong.start()
        try:
            until(lambda: "is down" in wrong.log.read_text() and "certificate" in wrong.log.read_text().lower(),
                  "the log to name the certificate problem")
            assert wrong.ready()[0] == 503
        finally:
            assert wrong.stop() == 0
    finally:
        m.stop()
