"""The TimescaleDB path, on a server that offers the extension.

TimescaleDB is not in Debian's archive; .ci/run installs the build in
../shared/vendor/timescaledb-2.28.3-pg15-amd64 first, so in CI (KEFU_REQUIRE_SERVICES=1)
these tests fail, never skip, where it is missing. Locally without it they skip, saying how
to install it. The contract tests (test_store_contract) run on TimescaleDB too; these check
what only it has: hypertables, compression, the continuous aggregate, chunk retention.
"""

from __future__ import annotations

import time
from dataclasses import replace

import psycopg

from kefu.storage import AuditEntry, ChatMessage, MetricSample, open_store


async def _hypertable_chunks(store, table: str) -> list[tuple[bool]]:
    return await store._read(lambda c: c.execute(
        "SELECT is_compressed FROM timescaledb_information.chunks WHERE hypertable_schema = current_schema() "
        "AND hypertable_name = %s ORDER BY range_start", (table,)).fetchall())


async def test_hypertables_compression_and_time_bucket(timescale_cfg, master):
    async with open_store(timescale_cfg, master=master, background=False) as store:
        assert store.timescale
        assert "hypertables" in store.health().features["timescaledb"]
        tables = await store._read(lambda c: c.execute(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema = current_schema() ORDER BY 1").fetchall())
        assert tables == [("audit_log", True), ("chat_messages", True), ("metric_samples", True)]
        caggs = await store._read(lambda c: c.execute(
            "SELECT view_name FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = current_schema()").fetchall())
        assert caggs == [("metric_samples_1m",)]
        base = 1_700_000_040.0
        await store.record_metrics([MetricSample("q", float(i), base + i * 10) for i in range(12)])
        await store.append_message(ChatMessage("c", "customer", "超时 timeout", created_at=time.time()))
        b = await store.metric_buckets("q", base, base + 120, 60)
        assert [(x.start, x.count) for x in b] == [(base, 6), (base + 60, 6)]
        assert len(await store.search("超时")) == 1


async def test_no_background_jobs_and_plain_tables_when_switched_off(timescale_cfg, master):
    async with open_store(timescale_cfg, master=master, background=False) as store:
        jobs = await store._read(lambda c: c.execute(
            "SELECT proc_name FROM timescaledb_information.jobs WHERE hypertable_schema = current_schema()").fetchall())
        assert jobs == []  # kefu's maintenance does retention, compression and roll-ups
        # Jobs an earlier kefu added (retention, compression, refresh) are deleted when a store opens
        # (added here to start in an hour, so that none runs meanwhile).
        later = "initial_start => now() + INTERVAL '1 hour'"
        await store._read(lambda c: (
            c.execute(f"SELECT add_retention_policy('chat_messages', INTERVAL '30 days', {later})"),
            c.execute(f"SELECT add_compression_policy('metric_samples', INTERVAL '7 days', {later})"),
            c.execute("SELECT add_continuous_aggregate_policy('metric_samples_1m', start_offset => INTERVAL '1 day', "
                      f"end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', {later})")))
        n = await store._read(lambda c: c.execute(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = current_schema()").fetchone()[0])
        assert n == 3
    async with open_store(timescale_cfg, master=master, background=False) as store:
        jobs = await store._read(lambda c: c.execute(
            "SELECT proc_name FROM timescaledb_information.jobs WHERE hypertable_schema = current_schema()").fetchall())
        assert jobs == []
    off = replace(timescale_cfg, pg_schema=timescale_cfg.pg_schema + "_off", timescaledb=False)
    try:
        async with open_store(off, master=master, background=False) as store:
            assert not store.timescale
            assert store.health().features["timescaledb"].startswith("off (storage.timescaledb = false)")
            n = await store._read(lambda c: c.execute(
                "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema = current_schema()"
            ).fetchone()[0])
            assert n == 0
    finally:
        with psycopg.connect(off.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{off.pg_schema}" CASCADE')


async def test_maintenance_compresses_old_chunks_and_retention_cuts_to_the_row(timescale_cfg, master):
    now = time.time()
    day = 86400.0
    cfg = replace(timescale_cfg, retention_days=90, metrics_retention_days=0)
    async with open_store(cfg, master=master, background=False) as store:
        ages = [200, 120, 95, 89, 40, 1]  # days; chat_messages chunks are 7 days
        ids = {}
        for a in ages:
            ids[a] = await store.append_message(ChatMessage("c", "customer", f"age {a} 旧", created_at=now - a * day))
        await store.audit(AuditEntry("t", "old", at=now - 100 * day))
        await store.audit(AuditEntry("t", "new", at=now - 10 * day))
        deleted = await store.prune(now)  # retention first, then compression of what is left
        assert deleted["chat_messages"] == 3 and deleted["audit_log"] == 1
        assert sorted(m.id for m in await store.list_messages("c")) == sorted(ids[a] for a in (89, 40, 1))
        # Chunks past 30 days (chat) are compressed, a few per pass; until done, prune continues.
        while await store.compress_chunks(now):
            pass
        chunks = await _hypertable_chunks(store, "chat_messages")
        assert [c[0] for c in chunks] == [True, True, False]  # the 89- and 40-day-old chunks; today's not
        # Compressed rows read, search and decrypt as before.
        assert {m.body for m in await store.list_messages("c")} == {"age 89 旧", "age 40 旧", "age 1 旧"}
        assert len(await store.search("旧")) == 3
        # Retention reaches into a compressed chunk, to the row.
        deleted = await store.prune(now + 2 * day)
        assert deleted["chat_messages"] == 1
        assert sorted(m.id for m in await store.list_messages("c")) == sorted(ids[a] for a in (40, 1))
        assert await store.prune(now + 2 * day) == {"mqtt_messages": 0, "chat_messages": 0, "audit_log": 0}


async def test_metric_samples_compress_and_still_bucket(timescale_cfg, master):
    now = time.time()
    base = (now - 20 * 86400) // 60 * 60
    async with open_store(timescale_cfg, master=master, background=False) as store:
        await store.record_metrics([MetricSample("q", float(i), base + i * 10, "t=a") for i in range(12)])
        await store.audit(AuditEntry("t", "flush"))
        before = await store.metric_buckets("q", base, base + 120, 60, labels="t=a")
        while await store.compress_chunks(now):
            pass
        assert [c[0] for c in await _hypertable_chunks(store, "metric_samples")] == [True]
        assert await store.metric_buckets("q", base, base + 120, 60, labels="t=a") == before
        assert [(b.count, b.avg) for b in before] == [(6, 2.5), (6, 8.5)]
