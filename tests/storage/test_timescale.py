"""The TimescaleDB path: runs wherever the extension is available to the test server.

TimescaleDB is an optional engine (not in Debian's packages), so this test skips, saying
why, exactly when the server does not offer it; everything else about PostgreSQL is
covered by the contract tests, which run the date_bin path on plain tables. A server that
offers the extension but cannot load it (shared_preload_libraries) fails here, as it should."""

from __future__ import annotations

import time

import psycopg
import pytest

from kefu.storage import ChatMessage, MetricSample, open_store


@pytest.fixture
def timescale_cfg(pg_cfg):
    with psycopg.connect(pg_cfg.dsn) as conn:
        row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    if row is None:
        pytest.skip("TimescaleDB is not installed on this PostgreSQL server (optional engine; "
                    "the plain-table path is tested by test_store_contract; scripts/timescale_check.py "
                    "checks a server that has it over one connection)")
    return pg_cfg


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
