"""What kefu's metrics cost, and how fast the stored history answers.

    .venv/bin/python benchmarks/metrics_bench.py [--pg postgresql://postgres@127.0.0.1:5432/test]

Prints three tables:
1. recording costs (ns per call): a plain int, prometheus-client counter/histogram, the desk
   hook handlers kefu registers;
2. the desk with and without metrics attached: customer messages per second through
   ``Desk.customer_message`` (in-memory store, no classifier), and a /metrics scrape and a
   sampler tick with 2000 MQTT connections attached;
3. stored history on SQLite (and PostgreSQL with --pg): writing a week of samples,
   rolling them up, and the dashboard's 1 h / 24 h / 7 d reads.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ops"))

from kefu.agents import Agent  # noqa: E402
from kefu.config.model import Storage  # noqa: E402
from kefu.desk import Desk  # noqa: E402
from kefu.events import MESSAGE_CREATED, Event  # noqa: E402
from kefu.hooks import EventPayload  # noqa: E402
from kefu.metrics import Metrics  # noqa: E402
from kefu.ops import query_history  # noqa: E402
from kefu.settings import DeskSettings  # noqa: E402
from kefu.storage import open_store  # noqa: E402
from kefu.timeseries import History, derive, snapshot  # noqa: E402


def per_call_ns(fn, n: int = 200_000) -> float:
    gc.disable()
    try:
        best = []
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            best.append((time.perf_counter_ns() - t0) / n)
        return min(best)
    finally:
        gc.enable()


def recording_costs() -> list[tuple[str, float]]:
    m = Metrics(process=False)

    class Box:
        n = 0

    box = Box()

    def plain():
        box.n += 1

    child = m.messages_received.labels("mqtt")
    hist = m.message_latency.labels("mqtt")
    payload = EventPayload(Event(MESSAGE_CREATED, {
        "message": {"author": {"kind": "agent"}, "private": False},
        "conversation": {"id": "cv-1", "channel": "mqtt", "team": "general"}}, 1.0))
    rows = [
        ("plain int += 1 (the broker's Router.stats)", per_call_ns(plain)),
        ("Counter.labels('mqtt').inc()", per_call_ns(lambda: m.messages_received.labels("mqtt").inc())),
        ("bound counter child .inc()", per_call_ns(child.inc)),
        ("bound histogram child .observe()", per_call_ns(lambda: hist.observe(0.003))),
        ("desk hook: message_created (agent reply)", per_call_ns(lambda: m._on_message_created(payload), 100_000)),
    ]
    return rows


async def desk_throughput(n: int, with_metrics: bool) -> float:
    agents = tuple(Agent(f"a{i}", teams=frozenset({"general"}), capacity=10_000) for i in range(4))
    desk = Desk(DeskSettings(agents=agents, queue_message=""))
    if with_metrics:
        Metrics(process=False).attach_desk(desk)
    async with trio.open_nursery() as nursery:
        await nursery.start(desk.run)
        for a in agents:
            await desk.agent_action(a.id, "sign_in")
        for i in range(200):  # warm up; conversations exist, so the timed messages are follow-ups
            await desk.customer_message("mqtt", f"c{i}", "hello")
        t0 = time.perf_counter()
        for i in range(n):
            await desk.customer_message("mqtt", f"c{i % 200}", "and another thing")
        dt = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return n / dt


class _Conn:
    __slots__ = ("stream", "proto")

    def __init__(self, version):
        self.stream = trio.SocketStream.__new__(trio.SocketStream)
        self.proto = type("P", (), {"version": version})()


class _Broker:
    def __init__(self, n: int) -> None:
        from kefu.broker.mqtt.session import Stats
        from kefu.broker.router import RetainedStore

        self.connections = {_Conn(4 if i % 3 else 5) for i in range(n)}
        self.router = type("R", (), {"stats": Stats(), "sessions": {i: None for i in range(n)},
                                     "subscription_count": 3 * n, "retained": RetainedStore(), "acl_denied": 0})()
        self.addresses = []


def scrape_costs() -> list[tuple[str, float]]:
    m = Metrics()
    m.attach_broker(_Broker(2000))
    for i in range(77):  # every BANKING77 intent seen once
        m.intents.labels(f"intent_{i}").inc()
    for team in ("general", "vip", "billing"):
        m.queue_wait.labels(team).observe(12)
    t0 = time.perf_counter()
    for _ in range(50):
        body, _ = m.exposition()
    scrape = (time.perf_counter() - t0) / 50
    prev = snapshot(m.registry)
    t0 = time.perf_counter()
    for _ in range(50):
        cur = snapshot(m.registry)
        derive(prev, cur, 10.0)
    tick = (time.perf_counter() - t0) / 50
    return [(f"/metrics body ({len(body) // 1024} KiB, 2000 connections, 77 intents)", scrape * 1000),
            ("sampler tick: snapshot + derive", tick * 1000)]


async def history_costs(cfg, label: str) -> list[tuple[str, str]]:
    from ops_stack import demo_history

    now = time.time()
    samples = demo_history(now)
    rows = []
    async with open_store(cfg, background=False) as store:
        hist = History(store, rollup_retention_days=400)
        await hist.setup()
        t0 = time.perf_counter()
        for i in range(0, len(samples), 5000):
            await store.record_metrics(samples[i:i + 5000])
        await store.run_in_writer(lambda conn: None)
        dt = time.perf_counter() - t0
        rows.append((f"{label}: store a week of samples", f"{len(samples)} rows in {dt:.2f} s ({len(samples) / dt:,.0f}/s)"))
        t0 = time.perf_counter()
        n = await hist.rollup(now, lag=15)
        rows.append((f"{label}: roll up the week", f"{n} minute rows in {time.perf_counter() - t0:.2f} s"))
        names = ["messages_in_per_s", "message_latency_p99_seconds", "queue_length", "agents", "intents_per_s",
                 "bot_containment_ratio", "sla_breaches_per_s"]
        for rng, secs in (("1h", 3600), ("24h", 86400), ("7d", 7 * 86400)):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                data = await query_history(hist, names, secs, 10.0, end=now)
                times.append(time.perf_counter() - t0)
            pts = sum(len(s["points"]) for ss in data["series"].values() for s in ss)
            rows.append((f"{label}: dashboard read {rng} ({len(names)} series)",
                         f"{statistics.median(times) * 1000:.0f} ms median, {pts} points"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", help="PostgreSQL DSN for the history part (a throwaway schema is used)")
    ap.add_argument("--messages", type=int, default=3000)
    args = ap.parse_args()

    print("1. Recording costs (best of 5, ns per call)")
    print(f"   {'operation':<48} {'ns':>8}")
    for name, ns in recording_costs():
        print(f"   {name:<48} {ns:>8.0f}")

    print("\n2. Desk throughput and scrape costs")
    base = statistics.median(trio.run(desk_throughput, args.messages, False) for _ in range(3))
    with_m = statistics.median(trio.run(desk_throughput, args.messages, True) for _ in range(3))
    print(f"   {'customer messages/s, desk without metrics':<56} {base:>10,.0f}")
    print(f"   {'customer messages/s, desk with metrics attached':<56} {with_m:>10,.0f}  "
          f"({(1 / with_m - 1 / base) * 1e6:+.1f} µs per message)")
    for name, ms in scrape_costs():
        print(f"   {name:<56} {ms:>8.2f} ms")

    print("\n3. Stored history")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rows += trio.run(history_costs, Storage(path=f"{d}/kefu.db", metrics_retention_days=0), "sqlite")
    if args.pg:
        import psycopg

        schema = "kefu_bench_" + uuid.uuid4().hex[:8]
        try:
            rows += trio.run(history_costs, Storage(backend="postgres", dsn=args.pg, pg_schema=schema,
                                                    metrics_retention_days=0), "postgres")
        finally:
            with psycopg.connect(args.pg, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    for name, v in rows:
        print(f"   {name:<48} {v}")


if __name__ == "__main__":
    main()
