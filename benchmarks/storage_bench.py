"""Storage and SM4 benchmark: one command, prints a table.

    .venv/bin/python benchmarks/storage_bench.py [--messages 40000] [--publishers 1000]
        [--dsn postgresql://postgres@127.0.0.1:5432/test] [--skip-postgres]

1. Persisted messages/s with ack-after-commit: ``--publishers`` concurrent trio tasks each
   await ``store.persist_publish`` (the call the broker makes before PUBACK) in a loop;
   every message also gets one offline-queue row for a persistent subscriber. SQLite runs
   on a temporary file with synchronous=FULL (and NORMAL for comparison); PostgreSQL in a
   throwaway schema, dropped afterwards. Targets: SQLite >= 20,000/s, PostgreSQL >= 10,000/s.
2. SM4 per-message cost at 64 B, 1 KiB and 64 KiB: OpenSSL through ``cryptography``
   (GCM, the envelope kefu uses, and CBC) against pure-Python ``gmssl`` (CBC: it has no
   GCM). Target: >= 50x at 1 KiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

import trio

from kefu.config.model import Storage
from kefu.storage import StoredMessage, open_store
from kefu.storage import crypto


async def persist_rate(cfg: Storage, messages: int, publishers: int) -> tuple[float, float, int]:
    """(messages/s, mean messages per commit, commits) with every publish awaiting its commit."""
    async with open_store(cfg, background=False) as store:
        # warm up (connections, statement caches)
        async with trio.open_nursery() as n:
            for i in range(200):
                n.start_soon(store.persist_publish, StoredMessage("warm", b"x"))
        per = messages // publishers
        payload = os.urandom(64)
        before = store._w.committed_batches

        async def publisher(p: int) -> None:
            topic = f"bench/{p}"
            for _ in range(per):
                await store.persist_publish(StoredMessage(topic, payload, qos=1), [("subscriber", 1)])

        t0 = time.perf_counter()
        async with trio.open_nursery() as n:
            for p in range(publishers):
                n.start_soon(publisher, p)
        dt = time.perf_counter() - t0
        commits = store._w.committed_batches - before
        return per * publishers / dt, per * publishers / max(commits, 1), commits


def time_per_call(fn, budget_s: float = 0.5, min_calls: int = 3) -> float:
    """Median seconds per call over a few rounds, within a rough time budget."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    calls = max(min_calls, int(budget_s / 5 / one))
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls)
    return statistics.median(rounds)


def sm4_rows() -> list[tuple]:
    from gmssl.sm4 import SM4_ENCRYPT, CryptSM4

    key, iv = os.urandom(16), os.urandom(16)
    gm = CryptSM4()
    gm.set_key(key, SM4_ENCRYPT)
    rows = []
    counter = iter(range(1, 1 << 62))
    for size, label in ((64, "64 B"), (1024, "1 KiB"), (65536, "64 KiB")):
        data = os.urandom(size)
        gcm = time_per_call(lambda: crypto.seal_envelope(key, 1, crypto.DIR_TO_DEVICE, next(counter), "dev", "d/dev/down", data))
        cbc = time_per_call(lambda: crypto.sm4_cbc_encrypt(key, iv, data))
        gms = time_per_call(lambda: gm.crypt_cbc(iv, data), budget_s=2.0 if size > 4096 else 1.0)
        rows.append((label, gcm, cbc, gms))
    return rows


def us(s: float) -> str:
    return f"{s * 1e6:,.1f} µs" if s < 0.01 else f"{s * 1e3:,.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--publishers", type=int, default=1000)
    ap.add_argument("--dsn", default=os.environ.get("KEFU_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()

    print(f"# kefu storage benchmark ({os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]})\n")
    print(f"## Persisted messages/s, ack after commit ({args.publishers} concurrent publishers, "
          f"{args.messages} messages of 64 B, one queue row each)\n")
    print("| backend | messages/s | messages per commit | commits | target |")
    print("|---|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as d:
        for sync in ("full", "normal"):
            cfg = Storage(backend="sqlite", path=os.path.join(d, f"bench-{sync}.db"), sqlite_synchronous=sync)
            rate, per, commits = trio.run(persist_rate, cfg, args.messages, args.publishers)
            target = ">= 20,000/s " + ("met" if rate >= 20000 else "MISSED")
            print(f"| SQLite (WAL, synchronous={sync}) | {rate:,.0f} | {per:,.0f} | {commits} | {target} |", flush=True)
    if not args.skip_postgres:
        import psycopg

        schema = "kefu_bench_" + uuid.uuid4().hex[:8]
        cfg = Storage(backend="postgres", dsn=args.dsn, pg_schema=schema)
        try:
            rate, per, commits = trio.run(persist_rate, cfg, args.messages, args.publishers)
            target = ">= 10,000/s " + ("met" if rate >= 10000 else "MISSED")
            print(f"| PostgreSQL (COPY per batch) | {rate:,.0f} | {per:,.0f} | {commits} | {target} |")
        finally:
            with psycopg.connect(args.dsn, autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    print("\n## SM4 per message: OpenSSL (cryptography) vs pure-Python gmssl\n")
    print("| size | cryptography GCM envelope | cryptography CBC | gmssl CBC | gmssl / GCM | gmssl / CBC |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, gcm, cbc, gms in sm4_rows():
        print(f"| {label} | {us(gcm)} | {us(cbc)} | {us(gms)} | {gms / gcm:,.0f}x | {gms / cbc:,.0f}x |", flush=True)
    print("\nTarget: >= 50x at 1 KiB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
