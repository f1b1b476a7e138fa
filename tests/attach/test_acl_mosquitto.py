"""deploy/mosquitto/kefu.acl on a real Mosquitto: customers cannot read or write each other's
topics, anonymous clients get only their ``anon:<client id>`` namespace, and kefu's own
user (logging in with a password file) takes the desk's shared subscription.

How a refusal shows: Mosquitto answers a refused SUBSCRIBE with 0x80 (3.1.1) / 0x87 (5.0)
and drops a refused PUBLISH (3.1.1 cannot say so; its PUBACK still comes). A dropped
publish is proven by ordering: the same client's next, allowed message arrives at kefu's
subscriber and the refused one never came before it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, Device, Kefu, Mosquitto, kefu_config, until  # noqa: E402

ACL = ROOT / "deploy" / "mosquitto" / "kefu.acl"
USERS = {"kefu": "kefu-node-secret", "alice": "alice-pw", "bob": "bob-pw"}
REFUSED = (0x80, 0x87)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def broker(tmp_path, mosquitto_bin):
    m = Mosquitto(mosquitto_bin, tmp_path, acl=ACL, users=USERS).start()
    yield m
    m.stop()


def codes(rcs) -> list[int]:
    return [getattr(r, "value", r) for r in rcs]


def test_customers_only_reach_their_own_topics(broker):
    desk = Device(broker.port, "desk-probe", username="kefu", password=USERS["kefu"]).connect()
    alice = Device(broker.port, "a1", username="alice", password=USERS["alice"]).connect()
    bob = Device(broker.port, "b1", username="bob", password=USERS["bob"], version=mqtt.MQTTv5).connect()
    anon = Device(broker.port, "dev-9").connect()
    try:
        assert codes(desk.subscribe("$share/kefu/kefu/c/+/+/in")) == [1]
        # Reading. Mosquitto 2 grants a SUBSCRIBE whatever the ACL and checks "read" on every
        # message it would deliver: a filter over someone else's topics, or a wildcard across
        # customers, gets nothing but one's own messages.
        for filt in ("kefu/c/alice/main/out", "kefu/c/bob/main/out", "kefu/c/+/main/out", "kefu/c/#", "#",
                     "kefu/desk/events"):
            alice.subscribe(filt)
        for filt in ("kefu/c/alice/main/out", "kefu/c/+/+/out"):
            bob.subscribe(filt)
            anon.subscribe(filt)
        anon.subscribe("kefu/c/anon:dev-9/main/out")
        for who in ("bob", "anon:dev-10", "anon:dev-9", "alice"):  # the desk answers each customer
            desk.publish(f"kefu/c/{who}/main/out", {"type": "message", "text": f"for {who}"})
        desk.publish("kefu/desk/events", {"type": "event"})
        desk.publish("kefu/c/bob/main/out", {"type": "message", "text": "for bob again"})
        # per-publisher order: what each saw before the desk's last message is all it will see
        assert json.loads(alice.next().payload)["text"] == "for alice"
        assert json.loads(anon.next().payload)["text"] == "for anon:dev-9"
        first = [json.loads(bob.next().payload)["text"] for _ in range(2)]
        assert first == ["for bob", "for bob again"]
        desk.publish("kefu/c/alice/main/out", {"type": "message", "text": "end"})
        desk.publish("kefu/c/anon:dev-9/main/out", {"type": "message", "text": "end"})
        for d in (alice, anon):  # nothing of another customer's, nor the desk's events, came between
            assert json.loads(d.next().payload)["text"] == "end"

        # writing: only into one's own .../in
        alice.publish("kefu/c/bob/main/in", {"type": "message", "text": "alice as bob"})
        alice.publish("kefu/c/alice/main/in", {"type": "message", "text": "alice as alice"})
        anon.publish("kefu/c/alice/main/in", {"type": "message", "text": "anon as alice"})
        anon.publish("kefu/c/anon:dev-9/main/in", {"type": "message", "text": "anon as itself"})
        got = {desk.next().topic: None for _ in range(2)}
        assert set(got) == {"kefu/c/alice/main/in", "kefu/c/anon:dev-9/main/in"}
        # and nobody writes what the desk says to a customer
        bob.publish("kefu/c/alice/main/out", {"type": "message", "text": "fake agent"})
        desk.publish("kefu/c/alice/main/out", {"type": "message", "text": "real agent"})
        assert json.loads(alice.next().payload)["text"] == "real agent"
    finally:
        for d in (desk, alice, bob, anon):
            d.stop()


def test_kefu_attaches_with_its_password_file_and_the_acl(tmp_path, broker):
    pw = tmp_path / "broker-password"
    pw.write_text(USERS["kefu"] + "\n")
    config = kefu_config(tmp_path / "a.toml", broker.port, "kefu-a",
                         extra={"broker": {"username": "kefu", "password_file": str(pw)}})
    kefu = Kefu(config).start()
    alice = Device(broker.port, "a1", username="alice", password=USERS["alice"]).connect()
    try:
        alice.subscribe("kefu/c/alice/main/out")
        alice.publish("kefu/c/alice/main/in", {"type": "message", "text": "hello from alice"})
        conv = until(lambda: kefu.conversations("alice"), "alice's conversation")[0]["id"]
        kefu.post(f"/api/v1/conversations/{conv}/messages", {"content": "hello alice"})
        while "hello alice" not in alice.next().payload.decode():
            pass
    finally:
        alice.stop()
        assert kefu.stop() == 0


def test_a_wrong_password_is_reported_and_not_ready(tmp_path, broker):
    config = kefu_config(tmp_path / "a.toml", broker.port, "kefu-a",
                         extra={"broker": {"username": "kefu", "password": "wrong"}})
    kefu = Kefu(config)
    kefu.wait_ready = False
    kefu.start()
    try:
        status, body = kefu.ready()
        assert status == 503 and body["checks"]["broker"] is False
        # Mosquitto says 0x87 (5.0) for a wrong password; other brokers 0x86
        until(lambda: any(f"connection refused: {c}" in kefu.log.read_text()
                          for c in ("0x86 bad user name or password", "0x87 not authorized")), "the log to name it")
    finally:
        assert kefu.stop() == 0
