"""Persisted QoS 1 messages/s through the broker: one command, one table.

    .venv/bin/python benchmarks/durable_bench.py [--duration 4] [--publishers 32] [--workers 2]
        [--dsn postgresql://postgres@127.0.0.1:5432/test] [--skip-postgres]

For each configuration a fresh ``kefu serve`` (the broker and its storage only: desk,
intent engine, WebSocket and HTTP listeners off) is driven by the raw-socket load
generator of broker_bench (bench_load.py, separate processes): ``--publishers`` MQTT
3.1.1 connections publish 64-byte QoS 1 messages to their own topics as fast as their
PUBACKs come back (at most 100 unacknowledged each). One persistent subscriber
(clean session false) subscribed to ``bench/#`` and went offline first, so every
message is also owed to it: with storage, each PUBACK means the message *and* its
offline-queue row were committed. The figure is acknowledged messages/s after a
warm-up; "stored" counts the rows afterwards (it must not be below what was
acknowledged).

Configurations: no persistence (``storage.persist_mqtt = false``: the in-memory
broker, the baseline), SQLite with ack after commit (synchronous full, the default,
and normal), SQLite acknowledging before the commit (``ack_after_commit = false``),
PostgreSQL with ack after commit (a throwaway schema, dropped afterwards). Targets
(issue 6): SQLite >= 20,000/s, PostgreSQL >= 10,000/s with ack after commit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_load as L  # noqa: E402

from kefu.broker.mqtt.codec import encode  # noqa: E402
from kefu.broker.mqtt.packets import Connect, Disconnect, Subscribe, Subscription  # noqa: E402

CTX = mp.get_context("fork")
CLK_TCK = os.sysconf("SC_CLK_TCK")
ACKED = 0  # counters[ACKED + i]: PUBACKs received by publisher worker i
DELIVERED = 40  # counters[DELIVERED]: deliveries the connected subscriber received
ONLINE_MQTT = "receive_maximum = 1000\nmax_offline_messages = 100000\n"
WINDOW = 1000  # connected subscriber: acknowledged but not yet delivered, at most (below its queue bounds)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Kefu:
    """``kefu serve`` on a free port with one [storage] configuration."""

    def __init__(self, name: str, storage: dict, mqtt: str = "") -> None:
        self.name = name
        self.mqtt = mqtt
        self.storage = storage
        self.tmp = Path(tempfile.mkdtemp(prefix=f"durable-bench-{name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Kefu":
        def val(v):
            return str(v).lower() if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else str(v))

        storage = {"path": str(self.tmp / "kefu.db"), **self.storage}
        conf = self.tmp / "kefu.toml"
        conf.write_text(
            f'[listeners.mqtt]\nhost = "127.0.0.1"\nport = {self.port}\n'
            '[listeners.ws]\nenabled = false\n[listeners.http]\nenabled = false\n'
            '[desk]\nenabled = false\n[nlp]\nenabled = false\n[metrics]\nenabled = false\n'
            f'[mqtt]\nsys_interval = 0\n{self.mqtt}[log]\nlevel = "warning"\n[storage]\n'
            + "".join(f"{k} = {val(v)}\n" for k, v in storage.items()))
        self.log = open(self.tmp / "kefu.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kefu.cli", "serve", "--config", str(conf)],
                                     stdout=self.log, stderr=self.log, cwd=self.tmp)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: kefu exited:\n{(self.tmp / 'kefu.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name}: kefu did not listen")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def offline_subscriber(port: int, client_id: str, topic_filter: str) -> None:
    """A persistent session subscribed to ``topic_filter`` that then goes away."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(encode(Connect(client_id=client_id, protocol_level=4, clean_start=False, keep_alive=600), 4))
        s.sendall(encode(Subscribe(1, (Subscription(topic_filter, 1),)), 4))
        got = b""
        while len(got) < 9:  # CONNACK (4) + SUBACK (5)
            chunk = s.recv(64)
            if not chunk:
                raise RuntimeError("subscriber closed by kefu")
            got += chunk
        s.sendall(encode(Disconnect(), 4))


def publisher(port, client_ids, topics, counters, slot, ctrl, report, inflight=100, batch=64, window=0, workers=1):
    """QoS 1 publishers that keep ``inflight`` unacknowledged each and count PUBACKs.
    ``window``: at most this many acknowledged and not yet delivered (all workers), so a
    connected subscriber sets the pace instead of the broker's queue bounds."""
    import select

    socks, info = L.connect_many(port, 4, client_ids)
    if info["failed"]:
        report.put(("error", f"publisher: {info['failed']} clients failed: {info['error']}"))
        return
    packets = [L.publish_qos1_packets(t, 4) for t in topics]
    pids = [0] * len(socks)
    out = [0] * len(socks)
    rest = [b""] * len(socks)
    report.put(("ready", None))
    while not ctrl[L.GO]:
        time.sleep(0.001)
    acked = 0
    while not ctrl[L.STOP]:
        for k, s in enumerate(socks):
            try:
                while True:
                    data = s.recv(65536, socket.MSG_DONTWAIT)
                    if not data:
                        report.put(("error", "publisher: closed by kefu"))
                        return
                    data = rest[k] + data
                    _, acks, _, used = L.scan(data, False)
                    rest[k] = data[used:]
                    out[k] -= acks
                    acked += acks
                    if len(data) < 65536:
                        break
            except BlockingIOError:
                pass
            room = min(batch, inflight - out[k])
            if window:
                room = min(room, window - (sum(counters[ACKED:ACKED + workers]) - counters[DELIVERED]))
            if room > 0:
                p, pk = pids[k], packets[k]
                chunk = pk[p:p + room] if p + room <= 65535 else pk[p:] + pk[:p + room - 65535]
                s.sendall(b"".join(chunk))
                pids[k] = (p + room) % 65535
                out[k] += room
            counters[slot] = acked
        select.select(socks, [], [], 0.001)
    report.put(("done", acked))
    for s in socks:
        s.close()


def persistent_receiver(port, client_id, topic_filter, counters, slot, ctrl, report):
    """A connected persistent session (clean session false) that PUBACKs every delivery:
    each message is stored, owed to it, marked sent and deleted on its PUBACK."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(encode(Connect(client_id=client_id, protocol_level=4, clean_start=False, keep_alive=600), 4))
    s.sendall(encode(Subscribe(1, (Subscription(topic_filter, 1),)), 4))
    got = b""
    while len(got) < 9:
        got += s.recv(64)
    report.put(("ready", None))
    s.settimeout(0.2)
    rest = b""
    n = 0
    while not ctrl[L.STOP]:
        try:
            data = s.recv(262144)
        except socket.timeout:
            continue
        if not data:
            report.put(("error", "receiver: closed by kefu"))
            return
        data = rest + data
        pubs, _, pids, used = L.scan(data, True)
        rest = data[used:]
        if pids:
            s.sendall(L.acks_for(pids))
        n += pubs
        counters[slot] = n
    report.put(("done", n))
    s.close()


def measure(k: Kefu, publishers: int, workers: int, warmup: float, duration: float, online: bool = False) -> dict:
    counters = CTX.RawArray("q", 64)
    ctrl = CTX.RawArray("q", 4)
    reports = CTX.Queue()
    procs = []
    if online:
        p = CTX.Process(target=persistent_receiver, daemon=True,
                        args=(k.port, "archive", "bench/#", counters, DELIVERED, ctrl, reports))
        p.start()
        procs.append(p)
        if reports.get(timeout=60)[0] != "ready":
            raise RuntimeError("receiver did not start")
    else:
        offline_subscriber(k.port, "archive", "bench/#")
    ids = [f"pub-{i}" for i in range(publishers)]
    per = [ids[i::workers] for i in range(workers)]
    for w, cids in enumerate(per):
        topics = [f"bench/{c}" for c in cids]
        p = CTX.Process(target=publisher, daemon=True, args=(k.port, cids, topics, counters, ACKED + w, ctrl, reports),
                        kwargs={"window": WINDOW if online else 0, "workers": workers})
        p.start()
        procs.append(p)
    ready = 0
    while ready < workers:  # the publishers
        what, value = reports.get(timeout=60)
        if what == "error":
            raise RuntimeError(value)
        ready += what == "ready"
    ctrl[L.GO] = 1
    time.sleep(warmup)
    n0, c0, t0, d0 = sum(counters[ACKED:ACKED + workers]), k.cpu_seconds(), time.monotonic(), counters[DELIVERED]
    time.sleep(duration)
    n1, c1, t1, d1 = sum(counters[ACKED:ACKED + workers]), k.cpu_seconds(), time.monotonic(), counters[DELIVERED]
    ctrl[L.STOP] = 1
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
    return {"rate": (n1 - n0) / (t1 - t0), "cpu": (c1 - c0) / (t1 - t0), "acked": n1,
            "delivered": (d1 - d0) / (t1 - t0)}


def stored_rows(k: Kefu) -> int | None:
    import sqlite3

    if k.storage.get("backend", "sqlite") == "sqlite":
        with sqlite3.connect(str(k.tmp / "kefu.db")) as c:
            return c.execute("SELECT count(*) FROM mqtt_queue WHERE client_id = 'archive'").fetchone()[0]
    import psycopg

    with psycopg.connect(k.storage["dsn"]) as c:
        return c.execute(f'SELECT count(*) FROM "{k.storage["pg_schema"]}".mqtt_queue '
                         "WHERE client_id = 'archive'").fetchone()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per configuration")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--publishers", type=int, default=32, help="publishing MQTT connections")
    ap.add_argument("--workers", type=int, default=2, help="load generator processes")
    ap.add_argument("--dsn", default=os.environ.get("KEFU_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()

    schemas: list[str] = []
    pg = {"backend": "postgres", "dsn": args.dsn}  # each run gets a throwaway schema of its own
    configs = [
        ("no persistence (in memory)", {"persist_mqtt": False}, None, False),
        ("SQLite, ack after commit (synchronous=full, default)", {}, 20_000, False),
        ("SQLite, ack after commit (synchronous=normal)", {"sqlite_synchronous": "normal"}, 20_000, False),
        ("SQLite, ack before commit (ack_after_commit=false)", {"ack_after_commit": False}, None, False),
        ("PostgreSQL, ack after commit", pg, 10_000, False),
        ("no persistence (in memory)", {"persist_mqtt": False}, None, True),
        ("SQLite, ack after commit (synchronous=full, default)", {}, 20_000, True),
        ("PostgreSQL, ack after commit", pg, 10_000, True),
    ]
    if args.skip_postgres:
        configs = [c for c in configs if c[1] is not pg]
    rows = []
    try:
        for name, storage, target, online in configs:
            if storage is pg:
                schemas.append("kefu_bench_" + uuid.uuid4().hex[:8])
                storage = {**pg, "pg_schema": schemas[-1]}
            # one connected subscriber: a QoS 1 window of 32 would make it, not storage, the limit
            # (and its queue must not drop what the pacing counts on)
            k = Kefu(f"c{len(rows)}", storage, ONLINE_MQTT if online else "").start()
            try:
                r = measure(k, args.publishers, args.workers, args.warmup, args.duration, online)
            finally:
                k.stop()
            r["stored"] = stored_rows(k) if storage.get("persist_mqtt", True) else None
            r["name_acks_after_commit"] = storage.get("ack_after_commit", True)
            k.cleanup()
            r["online"] = online
            rows.append((name, r, target))
            print(f"  {name}{' (online subscriber)' if online else ''}: {r['rate']:,.0f}/s", file=sys.stderr,
                  flush=True)
    finally:
        for schema in schemas:
            try:
                import psycopg

                with psycopg.connect(args.dsn, autocommit=True) as c:
                    c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            except Exception as e:  # noqa: BLE001
                print(f"could not drop schema {schema}: {e}", file=sys.stderr)

    print(f"\nQoS 1, 64 B, {args.publishers} publishers ({args.workers} generator processes); {args.duration:g} s "
          f"after {args.warmup:g} s warm-up; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}")
    for online in (False, True):
        part = [row for row in rows if row[1]["online"] == online]
        if not part:
            continue
        print("\n" + ("One persistent subscriber, connected, PUBACKing every delivery (each message stored, "
                      f"owed, marked sent, deleted on its PUBACK; mqtt.receive_maximum = 1000 and max_offline_messages = "
                      f"100000, publishers paced to "
                      f"at most {WINDOW:,} messages ahead of it):" if online else
                      "One persistent subscriber, offline (each message stored with its offline-queue row):") + "\n")
        render(part, online)
    return 0


def render(rows, online: bool) -> None:
    base = rows[0][1]["rate"]
    extra = " delivered msgs/s |" if online else " stored queue rows / acknowledged |"
    print(f"| configuration | acknowledged msgs/s | vs in memory |{extra} kefu CPU | target |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r, target in rows:
        if online:
            stored = f"{r['delivered']:,.0f}"
        else:
            stored = "-" if r["stored"] is None else f"{r['stored']:,} / {r['acked']:,}"
            if r["stored"] is not None and r["stored"] < r["acked"] and r["name_acks_after_commit"]:
                stored += " (acknowledged but not stored!)"
        verdict = "-" if target is None else (f">= {target:,}/s " + ("met" if r["rate"] >= target else "NOT met"))
        print(f"| {name} | {r['rate']:,.0f} | {r['rate'] / base:.2f}x | {stored} | {r['cpu'] * 100:.0f}% | {verdict} |")


if __name__ == "__main__":
    sys.exit(main())
