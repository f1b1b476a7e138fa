"""Stored metric history: deriving series from the registry, the sampler, 1-minute roll-ups and
range reads, on SQLite and on the real PostgreSQL (a schema of its own per test)."""

from __future__ import annotations

import math
import uuid

import pytest
import trio

from kefu.config.model import Storage
from kefu.metrics import Metrics
from kefu.ops import query_history
from kefu.storage import open_store
from kefu.storage.base import MetricSample
from kefu.timeseries import (ROLLUP_TABLE, SERIES, TIMESCALE_VIEW, History, Sampler, bucket_quantile, derive, labels_text,
                             range_plan, snapshot)

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


# --------------------------------------------------------------------------- deriving


def test_quantile_interpolates_within_the_bucket_like_promql():
    # 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, 4]
    b = [(1.0, 4), (2.0, 8), (4.0, 10), (math.inf, 10)]
    assert bucket_quantile(0.5, b) == pytest.approx(1.25)  # rank 5: a quarter into (1, 2]
    assert bucket_quantile(0.9, b) == pytest.approx(3.0)  # rank 9: half-way into (2, 4]
    assert bucket_quantile(0.99, [(1.0, 0), (math.inf, 3)]) == 1.0  # beyond the last finite bound: that bound
    assert bucket_quantile(0.5, [(1.0, 0), (math.inf, 0)]) is None  # nothing observed: no value


def test_derive_rates_gauges_means_and_interval_percentiles():
    m = Metrics(process=False)
    m.messages_received.labels("mqtt").inc(5)
    m.message_latency.labels("mqtt").observe(0.003)
    prev = snapshot(m.registry)
    m.messages_received.labels("mqtt").inc(20)
    m.messages_received.labels("chat").inc(10)
    for v in (0.0015, 0.0015, 0.0015, 0.04):  # this interval only: the earlier 3 ms must not count
        m.message_latency.labels("chat").observe(v)
    m.csat.observe(4)
    m.csat.observe(2)
    out = derive(prev, snapshot(m.registry), 10.0)
    assert out["messages_in_per_s"] == {"channel=mqtt": 2.0, "channel=chat": 1.0}
    assert out["message_latency_p50_seconds"][""] == pytest.approx(0.001 + 0.001 * 2 / 3)  # rank 2 of 3 in (1 ms, 2 ms]
    assert 0.02 < out["message_latency_p99_seconds"][""] <= 0.05  # the one slow message, its bucket
    assert out["csat_avg"] == {"": 3.0}
    # nothing happened to these in the interval: no sample rather than a stale or made-up one
    assert "first_response_avg_seconds" not in out and "intent_latency_p95_seconds" not in out
    assert "intents_per_s" not in out  # sparse: zero rates are not stored


def test_counter_reset_counts_from_zero():
    prev = {"kefu_messages_received_total": {(("channel", "mqtt"),): 100.0}}
    cur = {"kefu_messages_received_total": {(("channel", "mqtt"),): 7.0}}
    assert derive(prev, cur, 1.0)["messages_in_per_s"] == {"channel=mqtt": 7.0}


def test_every_series_reads_a_family_the_registry_has():
    from kefu.ops import DASHBOARD_SERIES
    from kefu.timeseries import RATIOS, SERIES_BY_NAME

    m = Metrics(process=False)
    families = {fam.name for fam in m.registry.collect()} | {
        # families the live collector adds once a broker, desk and store are attached
        "kefu_mqtt_messages_received", "kefu_mqtt_messages_sent", "kefu_queue_length",
        "kefu_queue_oldest_wait_seconds", "kefu_agents", "kefu_agent_occupancy_ratio", "kefu_storage_pending_writes"}
    for s in SERIES:
        family = s.source[:-len("_total")] if s.source.endswith("_total") else s.source
        assert family in families, s.name
    assert all(n in SERIES_BY_NAME or n in RATIOS for n in DASHBOARD_SERIES)


def test_range_plan_reads_raw_up_to_an_hour_and_rollups_beyond():
    assert range_plan(900, 10) == ("raw", 10)
    assert range_plan(3600, 10) == ("raw", 20)
    assert range_plan(86400, 10) == ("rollup", 300)
    assert range_plan(7 * 86400, 10) == ("rollup", 2040)


# --------------------------------------------------------------------------- on real databases


@pytest.fixture(params=["sqlite", "postgres", "timescale"])
def storage_cfg(request, tmp_path):
    """SQLite, plain PostgreSQL (plain tables even where TimescaleDB is installed), TimescaleDB."""
    if request.param == "sqlite":
        yield Storage(backend="sqlite", path=str(tmp_path / "kefu.db"), metrics_retention_days=0)
        return
    ts = request.param == "timescale"
    dsn = request.getfixturevalue("timescale_dsn" if ts else "postgres_dsn")
    schema = ("kefu_ops_ts_" if ts else "kefu_ops_") + uuid.uuid4().hex[:10]
    yield Storage(backend="postgres", dsn=dsn, pg_schema=schema, metrics_retention_days=0, timescaledb=ts)
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def _committed(store) -> None:
    # record_metrics does not wait for its commit; anything submitted before this call is committed after it
    await store.run_in_writer(lambda conn: None)


async def test_rollups_equal_the_raw_aggregates_and_are_idempotent(storage_cfg):
    async with open_store(storage_cfg, background=False) as store:
        hist = History(store, rollup_retention_days=30)
        await hist.setup()
        await hist.setup()  # idempotent (CREATE ... IF NOT EXISTS)
        # three minutes of 10-second samples for two label sets, values known
        samples = []
        for i in range(18):
            at = T0 + i * 10
            samples.append(MetricSample("queue_length", float(i), at, "team=general"))
            samples.append(MetricSample("queue_length", 100.0 + i % 3, at, "team=vip"))
        await store.record_metrics(samples)
        await _committed(store)
        # minute 3 is not complete until now - lag passes it: only minutes 0 and 1 are rolled up
        assert await hist.rollup(T0 + 170, lag=15) == 4
        assert await hist.rollup(T0 + 170, lag=15) == 0  # nothing new
        got = await hist.query(["queue_length"], T0, T0 + 180, 60, source="rollup")
        general = next(s for s in got["queue_length"] if s["labels"] == {"team": "general"})
        assert general["points"] == [[T0, 2.5, 0.0, 5.0, 6], [T0 + 60, 8.5, 6.0, 11.0, 6]]
        vip = next(s for s in got["queue_length"] if s["labels"] == {"team": "vip"})
        assert [p[1:] for p in vip["points"]] == [[101.0, 100.0, 102.0, 6], [101.0, 100.0, 102.0, 6]]
        # the third minute once it is complete; a second pass over the same minutes changes nothing
        assert await hist.rollup(T0 + 200, lag=15) == 2
        hist.watermark = T0  # as after a restart that lost its place: rewrite, do not duplicate
        assert await hist.rollup(T0 + 200, lag=15) == 6
        assert hist.rollup_source == (TIMESCALE_VIEW if storage_cfg.timescaledb and storage_cfg.backend == "postgres"
                                      else ROLLUP_TABLE)
        rows = await store.run_in_writer(lambda c: c.execute(f"SELECT count(*) FROM {hist.rollup_source}").fetchone()[0])
        assert rows == 6
        # a 3-minute bucket over the roll-ups weighs each minute by its sample count
        got = await hist.query(["queue_length"], T0, T0 + 180, 180, source="rollup")
        general = next(s for s in got["queue_length"] if s["labels"] == {"team": "general"})
        assert general["points"] == [[T0, 8.5, 0.0, 17.0, 18]]
        raw = await hist.query(["queue_length"], T0, T0 + 180, 180, source="raw")
        assert next(s for s in raw["queue_length"] if s["labels"] == {"team": "general"})["points"] == general["points"]


async def test_rollup_retention_deletes_old_minutes(storage_cfg):
    async with open_store(storage_cfg, background=False) as store:
        hist = History(store, rollup_retention_days=1)
        await hist.setup()
        old = T0 - 3 * 86400
        await store.record_metrics([MetricSample("csat_avg", 4.0, old, ""), MetricSample("csat_avg", 5.0, T0, "")])
        await _committed(store)
        hist.watermark = old
        await hist.rollup(T0 + 120, lag=0)
        got = await hist.query(["csat_avg"], old - 60, T0 + 120, 60, source="rollup")
        assert [p[0] for p in got["csat_avg"][0]["points"]] == [T0]  # the 3-day-old minute is gone


async def test_sampler_stores_series_and_the_dashboard_query_reads_them(storage_cfg):
    m = Metrics(process=False)
    now = [T0 + 5]
    async with open_store(storage_cfg, background=False) as store:
        sampler = Sampler(m, store, interval=10.0, rollup_retention_days=30, clock=lambda: now[0])
        async with trio.open_nursery() as n:
            await n.start(sampler.run)
            for i in range(1, 13):  # two minutes of samples, 10 s apart on the injected clock
                m.messages_received.labels("mqtt").inc(10 * i)
                m.message_latency.labels("mqtt").observe(0.004)
                now[0] = T0 + 5 + 10 * i
                values = await sampler.sample_once()
                assert "messages_in_per_s" in values and "message_latency_p99_seconds" in values
            n.cancel_scope.cancel()
        await _committed(store)
        assert sampler.samples_written > 24
        await sampler.history.rollup(T0 + 200, lag=10)
        got = await query_history(sampler.history, ["messages_in_per_s", "message_latency_p99_seconds"], 86400,
                                  10.0, end=T0 + 200)
        assert "roll-ups" in got["source"]
        pts = got["series"]["messages_in_per_s"][0]["points"]
        assert got["series"]["messages_in_per_s"][0]["labels"] == {"channel": "mqtt"}
        assert len(pts) == 1 and pts[0][3] > pts[0][2] > 0  # one 5-minute bucket, rates rose over it
        p99 = got["series"]["message_latency_p99_seconds"][0]["points"][0]
        assert 0.002 < p99[1] <= 0.005
        short = await query_history(sampler.history, ["messages_in_per_s"], 900, 10.0, end=T0 + 200)
        assert short["source"] == "raw samples" and len(short["series"]["messages_in_per_s"][0]["points"]) == 12


def test_labels_text_is_canonical():
    assert labels_text((("team", "a,b"), ("x", "1=2"))) == "team=a_b,x=1_2"
