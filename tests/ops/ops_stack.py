"""A whole kefu in-process for the ops tests: broker, bus, desk, store, bridge (HTTP on port 0), Ops.

Wired the way kefu/app.py wires them, with the metrics attached and the ops routes
(/metrics, /dashboard, /ops/*) on the bridge's HTTP listener.
"""

from __future__ import annotations

import json
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from kefu.agents import Agent
from kefu.bot import Answer, Answers
from kefu.bridge import service
from kefu.bridge.bus import RouterBus
from kefu.bridge.identity import sha256_hex
from kefu.broker.server import Broker
from kefu.config import from_dict
from kefu.desk import Desk
from kefu.ops import Ops
from kefu.ops_web import routes
from kefu.settings import DeskSettings
from kefu.storage import open_store

OPERATOR_TOKEN = "tok-operator-0123456789"
AGENT_TOKEN = "tok-alice-0123456789"


def config(tmp_path, *, storage: dict | None = None, **sections):
    data = {
        "listeners": {
            "mqtt": {"host": "127.0.0.1", "port": 0},
            "ws": {"enabled": True, "host": "127.0.0.1", "port": 0},
            "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        },
        "api": {"tokens": [
            {"name": "ops", "token_sha256": sha256_hex(OPERATOR_TOKEN), "role": "operator"},
            {"name": "alice", "token_sha256": sha256_hex(AGENT_TOKEN), "role": "agent", "agent": "alice"},
        ]},
        "storage": storage or {"backend": "sqlite", "path": str(tmp_path / "kefu.db")},
        "metrics": {"sample_interval": 10.0},
    }
    for k, v in sections.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return from_dict(data)


def desk_settings() -> DeskSettings:
    agents = (
        Agent("alice", "Alice", teams=frozenset({"general"}), capacity=4),
        Agent("bob", "Bob", teams=frozenset({"vip"}), capacity=2),
    )
    answers = Answers({}, {"card_lost": Answer("Your card is blocked now; a new one is on its way.")})
    return DeskSettings(agents=agents, teams={"general": "General", "vip": "VIP"}, answers=answers)


@dataclass
class Stack:
    cfg: object
    broker: Broker
    desk: Desk
    store: object
    ops: Ops
    bridge: object

    @property
    def http(self) -> str:
        return self.bridge.http_url

    @property
    def mqtt_port(self) -> int:
        return self.broker.addresses[0].port


@asynccontextmanager
async def ops_stack(cfg, *, classify=None, settings=None):
    async with open_store(cfg.storage, background=False) as store, trio.open_nursery() as nursery:
        ops = Ops(cfg)
        broker = Broker(cfg)
        await nursery.start(broker.serve)
        bus = RouterBus(broker)
        desk = Desk(settings or desk_settings(), publish=bus.publish,
                    classify=ops.metrics.instrument_classifier(classify) if classify else None)
        store = ops.attach(broker=broker, desk=desk, store=store)  # the proxy timing committed writes
        await nursery.start(desk.run)
        await nursery.start(bus.consume, desk.s.topics.desk_filters(), desk.ingest)
        bridge = await nursery.start(lambda task_status: service.run(
            cfg, broker=broker, desk=desk, bus=bus, extra_routes=routes(ops), task_status=task_status))
        ops.attach(bridge=bridge)
        await nursery.start(ops.run)
        try:
            yield Stack(cfg, broker, desk, store, ops, bridge)
        finally:
            nursery.cancel_scope.cancel()


class LiveKefu:
    """An ops stack in its own thread (its own trio loop), for synchronous clients (CLI, browser)."""

    def __init__(self, cfg, prepare=None) -> None:
        self.cfg = cfg
        self.prepare = prepare
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.st: Stack | None = None

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        try:
            async with ops_stack(self.cfg) as st:
                self.st = st
                if self.prepare is not None:
                    await self.prepare(st)
                with trio.CancelScope() as self._scope:
                    self._ready.set()
                    await trio.sleep_forever()
        except BaseException as e:  # noqa: BLE001 - surfaced in the test thread
            self._error = e
            self._ready.set()

    def run(self, afn, *args):
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def __enter__(self) -> "LiveKefu":
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(60), "kefu did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self.token)
        self._thread.join(10)


async def http_get(url: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes, str]:
    from kefu import httpc

    r = await httpc.request("GET", url, headers=headers or [], timeout=10)
    return r.status, r.body, r.header("content-type") or ""


async def http_json(url: str, headers=None):
    status, body, _ = await http_get(url, headers)
    return status, json.loads(body)


def demo_history(now: float, *, seed: int = 7) -> list:
    """A week of plausible samples (every 10 s for the last hour, every 5 min before) for the dashboard test."""
    import math
    import random

    from kefu.storage.base import MetricSample

    rnd = random.Random(seed)
    times = [now - 7 * 86400 + i * 300 for i in range(int((7 * 86400 - 3600) / 300))]
    times += [now - 3600 + i * 10 for i in range(360)]
    intents = {"card_lost": 0.30, "balance": 0.22, "transfer_failed": 0.15, "refund": 0.10, "change_pin": 0.08,
               "top_up": 0.06, "exchange_rate": 0.05, "out_of_scope": 0.04}
    out = []
    for t in times:
        day = math.sin((t % 86400) / 86400 * 2 * math.pi - math.pi / 2) * 0.5 + 0.5  # quiet at night
        hour = math.sin((t % 3600) / 3600 * 2 * math.pi)
        load = 0.2 + 0.8 * day + 0.1 * hour
        n = lambda k: 1 + rnd.uniform(-k, k)  # noqa: E731
        add = lambda name, v, labels="": out.append(MetricSample(name, max(0.0, v), t, labels))  # noqa: E731
        add("messages_in_per_s", 24 * load * n(0.1), "channel=mqtt")
        add("messages_in_per_s", 9 * load * n(0.15), "channel=chat")
        add("messages_out_per_s", 30 * load * n(0.1), "channel=mqtt")
        add("messages_out_per_s", 11 * load * n(0.15), "channel=chat")
        add("mqtt_messages_in_per_s", 180 * load * n(0.05))
        add("mqtt_messages_out_per_s", 260 * load * n(0.05))
        spike = 6 if rnd.random() < 0.01 else 1
        add("message_latency_p50_seconds", 0.0011 * n(0.1) * (1 + load))
        add("message_latency_p95_seconds", 0.0032 * n(0.15) * (1 + load))
        add("message_latency_p99_seconds", 0.0058 * n(0.2) * (1 + load) * spike)
        add("connections", 1400 * load * n(0.02), "channel=mqtt,protocol=3.1.1")
        add("connections", 500 * load * n(0.02), "channel=mqtt,protocol=5.0")
        add("connections", 260 * load * n(0.05), "channel=chat,protocol=kefu-chat-1")
        gq = round(max(0, 7 * load + 3 * hour + rnd.uniform(-1, 1)))
        add("queue_length", gq, "team=general")
        add("queue_length", round(max(0, 2 * load * hour)), "team=vip")
        add("queue_wait_seconds", gq * 14 * n(0.2), "team=general")
        add("queue_wait_seconds", 9 * load * max(0, hour), "team=vip")
        online = round(4 + 14 * day)
        add("agents", online, "status=online")
        add("agents", 2, "status=away")
        add("agents", 20 - online - 2, "status=offline")
        add("agent_occupancy_ratio", min(1, 0.55 + 0.35 * load * n(0.05)))
        conv = 0.6 * load * n(0.1)
        add("conversations_per_s", conv)
        add("handoffs_per_s", conv * (0.27 + 0.05 * hour))
        for intent, share in intents.items():
            add("intents_per_s", 24 * load * share * n(0.2), f"intent={intent}")
        if rnd.random() < 0.04:
            add("sla_breaches_per_s", 0.1, "sla=first_response")  # one breach in that 10-second interval
        add("csat_avg", 4.3 + rnd.uniform(-0.4, 0.4))
        add("first_response_avg_seconds", 25 + 40 * load * n(0.2))
        add("handle_time_avg_seconds", 280 * n(0.2))
        if rnd.random() < 0.05:
            add("rejected_per_s", 0.1, "reason=acl")
    return out
