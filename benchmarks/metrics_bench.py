"""What kefu's metrics cost, and how fast the stored history answers.

    .venv/bin/python benchmarks/metrics_bench.py [--pg postgresql://postgres@127.0.0.1:5432/test]
    .venv/bin/python benchmarks/metrics_bench.py --history-only --pg DSN --step 60 --rounds 3

Prints three tables:
1. recording costs (ns per call): a plain int, prometheus-client counter/histogram, the desk
   hook handlers kefu registers;
2. the desk with and without metrics attached: customer messages per second through
   ``Desk.customer_message`` (in-memory store, no classifier), and a /metrics scrape and a
   sampler tick with 2000 MQTT connections attached;
3. stored history on SQLite (and with --pg on plain PostgreSQL, ``timescaledb = false``,
   and on TimescaleDB where the server offers it): writing a week of samples, rolling them
   up, the dashboard's 1 h / 24 h / 7 d reads, and the space they take. The engines run
   in turn, ``--rounds`` times, and the table gives medians: on a shared machine only
   side-by-side figures compare. ``--step`` spaces the week's samples (default: the
   dashboard test's week, every 5 minutes and every 10 s in the last hour; the sampler's
   real spacing is 10 s).
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
from kefu.storage.base import MetricSample  # noqa: E402
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


def week_of_samples(now: float, step: float) -> list:
    """A week of the stored series every ``step`` seconds (as the sampler stores them, ~35 label sets)."""
    import math
    import random

    rnd = random.Random(7)
    series = [("messages_in_per_s", "channel=mqtt", 24), ("messages_in_per_s", "channel=chat", 9),
              ("messages_out_per_s", "channel=mqtt", 30), ("messages_out_per_s", "channel=chat", 11),
              ("mqtt_messages_in_per_s", "", 180), ("mqtt_messages_out_per_s", "", 260),
              ("message_latency_p50_seconds", "", 0.0011), ("message_latency_p95_seconds", "", 0.0032),
              ("message_latency_p99_seconds", "", 0.0058), ("connections", "channel=mqtt,protocol=3.1.1", 1400),
              ("connections", "channel=mqtt,protocol=5.0", 500), ("connections", "channel=chat,protocol=kefu-chat-1", 40),
              ("queue_length", "team=general", 3), ("queue_length", "team=vip", 1),
              ("queue_wait_seconds", "team=general", 40), ("queue_wait_seconds", "team=vip", 10),
              ("agents", "status=online", 12), ("agents", "status=away", 2), ("agent_occupancy_ratio", "", 0.6),
              ("conversations_per_s", "", 0.4), ("handoffs_per_s", "", 0.1), ("bot_resolved_per_s", "", 0.2),
              ("intent_confidence_avg", "", 0.8), ("intent_latency_p95_seconds", "", 0.004),
              ("storage_write_p99_seconds", "", 0.003), ("storage_pending_writes", "", 4)]
    series += [("intents_per_s", f"intent={i}", 0.05) for i in ("card_lost", "balance", "transfer_failed", "refund",
                                                               "change_pin", "top_up", "exchange_rate", "out_of_scope")]
    out = []
    t = now - 7 * 86400
    while t < now:
        load = 0.2 + 0.8 * (math.sin((t % 86400) / 86400 * 2 * math.pi - math.pi / 2) * 0.5 + 0.5)
        for name, labels, base in series:
            out.append(MetricSample(name, base * load * (1 + rnd.uniform(-0.1, 0.1)), t, labels))
        t += step
    return out


async def history_costs(cfg, label: str, samples: list, now: float) -> dict[str, float]:
    """Seconds (and bytes) for one engine: write, roll up, dashboard reads, size."""
    out: dict[str, float] = {}
    async with open_store(cfg, background=False) as store:
        hist = History(store, rollup_retention_days=400)
        await hist.setup()
        t0 = time.perf_counter()
        for i in range(0, len(samples), 5000):
            await store.record_metrics(samples[i:i + 5000])
        await store.run_in_writer(lambda conn: None)
        out["write"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out["rollup_rows"] = await hist.rollup(now, lag=15)
        out["rollup"] = time.perf_counter() - t0
        # Steady state: the sampler's once-a-minute roll-up of the minute just completed
        # (36 label sets, a sample every 10 s), written as the sampler writes it.
        names_labels = sorted({(x.name, x.labels) for x in samples})
        minute = (now - 15) // 60 * 60
        times = []
        for k in range(5):
            lo = minute + 60 * k
            await store.record_metrics([MetricSample(nm, 1.0, lo + j * 10, lb) for nm, lb in names_labels
                                        for j in range(6)])
            await store.run_in_writer(lambda conn: None)
            t0 = time.perf_counter()
            await hist.rollup(lo + 60 + 15, lag=15)
            times.append(time.perf_counter() - t0)
        out["rollup_minute"] = statistics.median(times)
        names = ["messages_in_per_s", "message_latency_p99_seconds", "queue_length", "agents", "intents_per_s",
                 "bot_containment_ratio", "sla_breaches_per_s"]
        for rng, secs in (("1h", 3600), ("24h", 86400), ("7d", 7 * 86400)):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                await query_history(hist, names, secs, 10.0, end=now)
                times.append(time.perf_counter() - t0)
            out[rng] = statistics.median(times)
        if store.dialect == "postgres":
            def size(c):
                if store.timescale:
                    return c.execute("SELECT hypertable_size('metric_samples'), "
                                     "hypertable_size(format('%I.%I', materialization_hypertable_schema, "
                                     "materialization_hypertable_name)::regclass) "
                                     "FROM timescaledb_information.continuous_aggregates "
                                     "WHERE view_schema = current_schema()").fetchone()
                return c.execute("SELECT pg_total_relation_size('metric_samples'), "
                                 "pg_total_relation_size('metric_rollups_1m')").fetchone()
            out["bytes"], out["rollup_bytes"] = await store._read(size)
            if store.timescale:  # as a week later: the week's raw chunks past 7 days get compressed
                t0 = time.perf_counter()
                while await store.compress_chunks(now + 8 * 86400, limit=16):
                    pass
                out["compress"] = time.perf_counter() - t0
                out["bytes_compressed"] = (await store._read(size))[0]
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    await query_history(hist, names, 3600, 10.0, end=now)
                    times.append(time.perf_counter() - t0)
                out["1h_compressed"] = statistics.median(times)
    return out


def history_table(args) -> None:
    import psycopg

    now = time.time()
    if args.step:
        samples = week_of_samples(now, args.step)
    else:
        from ops_stack import demo_history
        samples = demo_history(now)
    engines = ["sqlite"]
    if args.pg:
        engines.append("postgres")
        with psycopg.connect(args.pg) as conn:
            if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone():
                engines.append("timescaledb")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.rounds):
        for e in (engines if r % 2 == 0 else engines[::-1]):
            with tempfile.TemporaryDirectory() as d:
                if e == "sqlite":
                    cfg = Storage(path=f"{d}/kefu.db", metrics_retention_days=0)
                else:
                    cfg = Storage(backend="postgres", dsn=args.pg, pg_schema="kefu_bench_" + uuid.uuid4().hex[:8],
                                  metrics_retention_days=0, timescaledb=e == "timescaledb")
                try:
                    runs[e].append(trio.run(history_costs, cfg, e, samples, now))
                finally:
                    if e != "sqlite":
                        with psycopg.connect(args.pg, autocommit=True) as conn:
                            conn.execute(f'DROP SCHEMA IF EXISTS "{cfg.pg_schema}" CASCADE')
    med = {e: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for e, rs in runs.items()}
    n = len(samples)
    rows = [("store a week of samples", lambda m: f"{m['write']:.2f} s ({n / m['write'] / 1000:,.0f} k rows/s)"),
            ("roll up the week at once (catch-up)", lambda m: f"{m['rollup']:.2f} s ({m['rollup_rows']:,.0f} minute rows)"),
            ("roll up one minute (every minute)", lambda m: f"{m['rollup_minute'] * 1e3:.0f} ms"),
            ("dashboard read 1 h / 24 h / 7 d", lambda m: f"{m['1h'] * 1e3:.0f} / {m['24h'] * 1e3:.0f} / "
                                                          f"{m['7d'] * 1e3:.0f} ms"),
            ("raw samples + roll-ups on disk", lambda m: f"{m['bytes'] / 2**20:.1f} + {m['rollup_bytes'] / 2**20:.1f} MiB"
             if "bytes" in m else "-"),
            ("compress the week (as 8 days later)", lambda m: f"{m['compress']:.2f} s: {m['bytes'] / 2**20:.1f} -> "
             f"{m['bytes_compressed'] / 2**20:.1f} MiB; 1 h read {m['1h_compressed'] * 1e3:.0f} ms"
             if "compress" in m else "-")]
    print(f"   {n:,} samples ({len(samples) / 7:,.0f} a day), medians of {args.rounds} rounds, engines in turn")
    print("   | | " + " | ".join(engines) + " |")
    print("   |---|" + "---|" * len(engines))
    for name, fmt in rows:
        print(f"   | {name} | " + " | ".join(fmt(med[e]) for e in engines) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", help="PostgreSQL DSN for the history part (a throwaway schema is used)")
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--history-only", action="store_true", help="only part 3, the stored history")
    ap.add_argument("--step", type=float, default=0.0, help="seconds between a series' samples in the week "
                    "(default: the dashboard test's week, 5 min apart)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per engine, in turn; medians reported")
    args = ap.parse_args()
    if args.history_only:
        print("3. Stored history")
        history_table(args)
        return

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
    history_table(args)


if __name__ == "__main__":
    main()
