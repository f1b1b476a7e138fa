"""Check kefu's TimescaleDB path on any server that offers the extension, over ONE connection.

    .venv/bin/python scripts/timescale_check.py postgresql://user:pw@host:port/db

tests/storage/test_timescale.py covers the same ground through the full store, but the
store needs several connections; this script needs one, so it also runs against
single-connection servers such as PGlite's TimescaleDB build behind pglite-socket.
It works in a throwaway schema (dropped at the end) and exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys
import uuid
from types import SimpleNamespace

import psycopg

from kefu.storage import migrate
from kefu.storage.base import AuditEntry, ChatMessage
from kefu.storage.postgres import PostgresStore, detect_features


def main(dsn: str) -> int:
    schema = "kefu_tscheck_" + uuid.uuid4().hex[:8]
    conn = psycopg.connect(dsn, prepare_threshold=None)  # no server-side prepares: PGlite shares one backend
    try:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f"SET search_path = {schema}, public")
        conn.commit()
        print("server", conn.execute("SHOW server_version").fetchone()[0])
        for line in migrate.upgrade_postgres(conn):
            print(" ", line)
        features, hyper = detect_features(conn)
        print(" ", features)
        conn.commit()
        if not hyper:
            print("FAIL: TimescaleDB not in use (see the 0003 line above)")
            return 1
        store = PostgresStore(SimpleNamespace(dsn=dsn, retention_days=30, metrics_retention_days=7), schema=schema)
        cur = conn.cursor()
        tables = cur.execute("SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables "
                             "WHERE hypertable_schema = %s ORDER BY 1", (schema,)).fetchall()
        jobs = sorted((j[0], j[1]) for j in cur.execute(
            "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs WHERE hypertable_schema = %s",
            (schema,)).fetchall())
        base = 1_700_000_040.0
        store._h_metrics(cur, [[(base + i * 10, "q", "", float(i)) for i in range(12)]])
        store._h_chat(cur, [(ChatMessage("c", "customer", "超时 timeout"), "超时 timeout".encode(), None, "超时 timeout")])
        store._h_audit(cur, [AuditEntry("check", "run")])
        conn.commit()
        store.timescale = True
        tb = store._bucket_rows(cur, "q", base, base + 120, 60, None)
        store.timescale = False
        db = store._bucket_rows(cur, "q", base, base + 120, 60, None)
        hits = store._search_rows(cur, ["超时"], None, 10)
        expect_tables = [("audit_log", True), ("chat_messages", True), ("metric_samples", True)]
        checks = {
            "hypertables with compression": tables == expect_tables,
            "no background jobs (kefu's maintenance does the upkeep)": jobs == [],
            "time_bucket == date_bin": tb == db == [(base, 6, 2.5, 0.0, 5.0), (base + 60, 6, 8.5, 6.0, 11.0)],
            "trigram search": len(hits) == 1,
        }
        for name, ok in checks.items():
            print(f"  {'ok  ' if ok else 'FAIL'} {name}")
        return 0 if all(checks.values()) else 1
    finally:
        conn.rollback()
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.commit()
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
