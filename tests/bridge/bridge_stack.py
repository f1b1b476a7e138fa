"""A whole kefu in-process for the bridge tests: broker, desk, bus, /chat, HTTP.

Wired the way kefu/app.py wires them (broker -> RouterBus -> Desk publishing through
it and consuming its filters -> bridge listeners), all on port 0.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import trio

from kefu.agents import Agent
from kefu.bridge import service
from kefu.bridge.bus import RouterBus
from kefu.bridge.identity import sha256_hex
from kefu.broker.server import Broker
from kefu.config import from_dict
from kefu.desk import Desk
from kefu.settings import DeskSettings

AGENT_TOKENS = {"alice": "tok-alice-0123456789", "bob": "tok-bob-0123456789"}
OPERATOR_TOKEN = "tok-operator-0123456789"
SITE_SECRET = "site-secret-for-tests"


def config(**over):
    data = {
        "listeners": {
            "mqtt": {"host": "127.0.0.1", "port": 0},
            "ws": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        },
        "api": {"tokens": [
            *({"name": a, "token_sha256": sha256_hex(t), "role": "agent", "agent": a} for a, t in AGENT_TOKENS.items()),
            {"name": "ops", "token_sha256": sha256_hex(OPERATOR_TOKEN), "role": "operator"},
        ]},
        "widget": {"sites": [{"name": "Shop", "public_token": "pk_shop", "identity_secret": SITE_SECRET}]},
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        data.setdefault(section, {})[leaf] = value
    return from_dict(data)


def desk_settings(**over) -> DeskSettings:
    agents = (
        Agent("alice", "Alice", teams=frozenset({"general"}), capacity=5),
        Agent("bob", "Bob", teams=frozenset({"general"}), capacity=5),
    )
    s = DeskSettings(agents=agents, canned={"hello": "Hello! How can I help?", "bye": "Glad to help. Bye!"},
                     labels=frozenset({"billing", "device", "vip"}))
    return replace(s, **over)


@dataclass
class Stack:
    cfg: object
    broker: Broker
    bus: RouterBus
    desk: Desk
    bridge: service.Bridge

    @property
    def ws(self) -> str:
        return self.bridge.ws_url

    @property
    def http(self) -> str:
        return self.bridge.http_url

    @property
    def mqtt_port(self) -> int:
        return self.broker.addresses[0].port


@asynccontextmanager
async def kefu_stack(cfg=None, settings=None, classify=None):
    cfg = cfg or config()
    async with trio.open_nursery() as nursery:
        broker = Broker(cfg)
        await nursery.start(broker.serve)
        bus = RouterBus(broker)
        desk = Desk(settings or desk_settings(), publish=bus.publish, classify=classify)
        await nursery.start(desk.run)
        await nursery.start(bus.consume, desk.s.topics.desk_filters(), desk.ingest)
        bridge = await nursery.start(lambda task_status: service.run(
            cfg, broker=broker, desk=desk, bus=bus, task_status=task_status))
        try:
            yield Stack(cfg, broker, bus, desk, bridge)
        finally:
            nursery.cancel_scope.cancel()


class ChatClient:
    """A /chat client as a browser would be (tests only): frames in, frames out."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.seen: list[dict] = []

    async def send(self, frame: dict | str) -> None:
        await self.conn.send_message(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self) -> dict:
        f = json.loads(await self.conn.get_message())
        self.seen.append(f)
        return f

    async def until(self, pred, timeout: float = 5.0) -> dict:
        with trio.fail_after(timeout):
            while True:
                f = await self.recv()
                if pred(f):
                    return f


def app_config(db_path, **over):
    """``config()`` for the whole of kefu (``kefu.app.run``): the same agents as
    ``desk_settings()`` from [[agents]], transcripts in SQLite at ``db_path``, no intent model."""
    data = {
        "listeners": {
            "mqtt": {"host": "127.0.0.1", "port": 0},
            "ws": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        },
        "api": {"tokens": [
            *({"name": a, "token_sha256": sha256_hex(t), "role": "agent", "agent": a} for a, t in AGENT_TOKENS.items()),
            {"name": "ops", "token_sha256": sha256_hex(OPERATOR_TOKEN), "role": "operator"},
        ]},
        "teams": [{"id": "general", "name": "General"}, {"id": "vip", "name": "VIP"}],
        "agents": [{"id": "alice", "name": "Alice", "teams": ["general"], "capacity": 5},
                   {"id": "bob", "name": "Bob", "teams": ["vip"], "capacity": 5}],
        "nlp": {"enabled": False},
        "mqtt": {"sys_interval": 0},
        "storage": {"backend": "sqlite", "path": str(db_path)},
    }
    for key, value in over.items():
        section, _, leaf = key.partition("__")
        data.setdefault(section, {})[leaf] = value
    return from_dict(data)


@asynccontextmanager
async def kefu_app(cfg):
    """The whole of kefu as ``kefu serve`` wires it (storage, transcripts, desk, bridge), on port 0.
    Yields the ``App``; what a desk call returned is already committed to ``app.store``."""
    from kefu.app import run

    async with trio.open_nursery() as nursery:
        app = await nursery.start(run, cfg)
        try:
            yield app
        finally:
            nursery.cancel_scope.cancel()
