"""The desk on the real broker over real sockets, with paho-mqtt clients.

A device asks the bot, then for a human; an agent signed in over MQTT gets the
offer with the transcript, accepts and replies; the device reads it. An attacker
tries neighbouring topics and wildcards and is refused by the broker (SUBACK/PUBACK
0x87) or, for wildcards that reach its own topics, granted and never sent another
customer's messages; impostors cannot log in as agents, and killing the agent's connection puts
its conversation back in the queue.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import trio

from kefu.bridge.bus import RouterBus
from kefu.broker.auth import hash_password
from kefu.broker.server import Broker
from kefu.config import from_dict

from .conftest import keyword_classifier

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("kefu_test_realclients", HERE.parent / "broker" / "realclients.py")
realclients = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(realclients)
Paho = realclients.Paho

NOT_AUTHORIZED = 0x87
# The desk consumes through the broker's publish hook, not a subscription, so a 5.0
# PUBACK for a customer's message may say 0x10 "no matching subscribers": still a success.
OK = (0x00, 0x10)
PASSWORD = "alice-secret"
DEVICE_PASSWORD = "dev-1-secret"  # a customer's name is only ever used with its password (issue 12)


def cfg():
    return from_dict({
        "listeners": {"mqtt": {"host": "127.0.0.1", "port": 0}, "ws": {"enabled": False},
                      "http": {"enabled": False}},
        "mqtt": {"sys_interval": 0},
        "auth": {"allow_anonymous": True, "users": [{"username": "agent:alice", "password_hash": hash_password(PASSWORD)},
                                                   {"username": "dev-1", "password_hash": hash_password(DEVICE_PASSWORD, log_n=4)}]},
        "teams": [{"id": "general"}, {"id": "vip"}],
        "agents": [{"id": "alice", "name": "Alice", "teams": ["general"], "capacity": 2},
                   {"id": "bob", "name": "Bob", "teams": ["general"]}],
        "desk": {"accept_timeout": 60.0, "agent_keepalive": 0.0},
        "bot": {"answers_file": str(HERE.parents[1] / "config" / "answers.toml")},
    })


class DeskThread:
    """Broker + bus + desk glue under trio.run in a background thread."""

    def __init__(self) -> None:
        self.cfg = cfg()
        self.error = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        from kefu import broker_glue

        async def main():
            async with trio.open_nursery() as n:
                self.broker = Broker(self.cfg)
                addrs = await n.start(self.broker.serve)
                self.port = addrs[0].port
                bus = RouterBus(self.broker)
                self.desk = await n.start(lambda task_status: broker_glue.run(
                    self.cfg, broker=self.broker, bus=bus, classify=keyword_classifier, task_status=task_status))
                self.token = trio.lowlevel.current_trio_token()
                self.cancel = n.cancel_scope.cancel
                self.started.set()

        try:
            trio.run(main)
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            self.started.set()

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(10) and self.error is None, self.error
        return self

    def __exit__(self, *exc):
        trio.from_thread.run_sync(self.cancel, trio_token=self.token)
        self.thread.join(10)

    def call(self, afn, *args):
        return trio.from_thread.run(afn, *args, trio_token=self.token)


def frames(client: Paho, pred, timeout=10.0) -> dict:
    """The next message on any subscribed topic whose (topic, JSON) satisfies pred."""
    while True:
        msg = client.get(timeout)
        doc = json.loads(msg.payload)
        if pred(msg.topic, doc):
            return doc


def test_device_bot_agent_over_real_sockets_and_the_acl_holds():
    with DeskThread() as k:
        dev = Paho(k.port, "dev-1", version=5, username="dev-1", password=DEVICE_PASSWORD)
        assert dev.connect()[1] == 0
        assert dev.subscribe("kefu/c/dev-1/+/out", qos=1) == [1]
        assert dev.subscribe("kefu/c/dev-1/main/events", qos=1) == [1]
        assert dev.publish("kefu/c/dev-1/main/in", b"when will my card arrive?", qos=1) in OK
        answer = frames(dev, lambda t, d: t.endswith("/out") and d["message"]["author"]["kind"] == "bot")
        assert "working days" in answer["message"]["text"]

        # impostors: unknown agent name, wrong password
        bad = Paho(k.port, "x1", version=5, username="agent:bob", password="whatever")
        assert bad.connect()[1] != 0
        bad2 = Paho(k.port, "x2", version=5, username="agent:alice", password="wrong")
        assert bad2.connect()[1] != 0
        for b in (bad, bad2):
            b.c.loop_stop()

        # the agent signs in over MQTT (its connection is its presence) and steps away for a moment
        agent = Paho(k.port, "alice-console", version=5, username="agent:alice", password=PASSWORD)
        assert agent.connect()[1] == 0
        assert agent.subscribe("kefu/agent/alice/inbox", qos=1) == [1]
        assert agent.subscribe("kefu/team/general/queue", qos=1) == [1]
        assert agent.publish("kefu/agent/alice/ctl", b'{"type": "status", "status": "away"}', qos=1) in OK
        frames(agent, lambda t, d: d.get("type") == "agent" and d["agent"]["status"] == "away")

        assert dev.publish("kefu/c/dev-1/main/in", json.dumps({"type": "message", "text": "talk to a human"}).encode(),
                           qos=1) in OK
        q = frames(dev, lambda t, d: d.get("type") == "queue")
        cid = q["conversation"]
        assert q["position"] == 1
        waiting = frames(agent, lambda t, d: t == "kefu/team/general/queue")
        assert waiting["conversation"]["id"] == cid and waiting["conversation"]["status"] == "queued"

        assert agent.publish("kefu/agent/alice/ctl", b'{"type": "status", "status": "online"}', qos=1) in OK
        offer = frames(agent, lambda t, d: t.endswith("/inbox") and d.get("event") == "assigned")
        assert offer["conversation"]["id"] == cid and offer["offer"]["deadline"]
        assert [m["text"] for m in offer["transcript"]][:2] == ["when will my card arrive?", answer["message"]["text"]]
        assert agent.publish("kefu/agent/alice/ctl", json.dumps(
            {"type": "action", "action": "accept", "conversation": cid}).encode(), qos=1) in OK
        frames(dev, lambda t, d: d.get("type") == "message" and "has joined" in d["message"]["text"])
        assert agent.publish(f"kefu/agent/alice/conv/{cid}", b"Hi, Alice here.", qos=1) in OK
        got = frames(dev, lambda t, d: d.get("type") == "message" and d["message"]["author"]["kind"] == "agent")
        assert got["message"]["text"] == "Hi, Alice here."
        assert dev.publish("kefu/c/dev-1/main/in", b"thanks!", qos=1) in OK
        seen = frames(agent, lambda t, d: d.get("type") == "message" and d["message"]["author"]["kind"] == "customer")
        assert seen["message"]["text"] == "thanks!"

        # the attacker: every neighbouring topic and wildcard. Filters that can read
        # nothing are refused; wildcards reaching its own topics (or topics outside
        # kefu's namespace) are granted, as in Mosquitto, and checked at delivery.
        evil = Paho(k.port, "evil", version=5)
        assert evil.connect()[1] == 0
        for f in ["kefu/c/dev-1/#", "kefu/agent/alice/inbox", "kefu/agent/+/inbox", "kefu/team/general/queue",
                  "kefu/desk/events", "$share/g/kefu/c/dev-1/main/out", "kefu/c/dev-1/main/out"]:
            assert evil.subscribe(f, qos=1) == [NOT_AUTHORIZED], f
        # an anonymous client is the customer anon:<client id>: its own conversations are
        # readable, the customer "evil" is someone else
        for f in ["#", "kefu/#", "kefu/c/+/main/out", "+/c/dev-1/main/out", "kefu/c/anon:evil/#"]:
            assert evil.subscribe(f, qos=1) == [1], f
        assert evil.subscribe("kefu/c/evil/#", qos=1) == [NOT_AUTHORIZED]
        # dev-1's and the agent's traffic flows while evil listens on '#'
        assert dev.publish("kefu/c/dev-1/main/in", b"are you still there?", qos=1) in OK
        frames(agent, lambda t, d: d.get("type") == "message" and d["message"]["text"] == "are you still there?")
        assert agent.publish(f"kefu/agent/alice/conv/{cid}", b"Yes, one moment.", qos=1) in OK
        frames(dev, lambda t, d: d.get("type") == "message" and d["message"]["text"] == "Yes, one moment.")
        # then evil's own conversation: its bot answer is the marker (one publisher, the desk, in order)
        assert evil.publish("kefu/c/anon:evil/main/in", b"when will my card arrive?", qos=1) in OK
        heard = []
        while not heard or not (heard[-1].startswith("kefu/c/anon:evil/") and heard[-1].endswith("/out")):
            heard.append(evil.get().topic)
        assert all(t.startswith("kefu/c/anon:evil/") for t in heard), heard
        for t in ["kefu/c/dev-1/main/in", "kefu/c/dev-1/main/out", f"kefu/agent/alice/conv/{cid}", "kefu/agent/alice/ctl",
                  "kefu/desk/events", "kefu/d/dev-1/alarm"]:
            assert evil.publish(t, b"spoof", qos=1) == NOT_AUTHORIZED, t
        # an agent may not write to a conversation that is not its own
        assert agent.publish("kefu/agent/alice/conv/cv-999", b"x", qos=1) == NOT_AUTHORIZED
        assert agent.subscribe("kefu/team/vip/queue", qos=1) == [NOT_AUTHORIZED]

        # killing the agent's connection requeues its conversation at the front
        agent.drop()
        back = frames(dev, lambda t, d: d.get("type") == "conversation" and d["conversation"]["status"] == "queued")
        assert back["reason"] == "agent_offline"
        assert k.call(k.desk.agent, "alice")["status"] == "offline"
        for c in (dev, evil):
            c.disconnect()


