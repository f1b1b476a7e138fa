"""Metric history: a sampler task turning the registry into stored series, and 1-minute roll-ups.

What is stored is not the raw Prometheus families but a fixed catalogue of *series*
(``SERIES``) an operator reads directly: rates per second for counters, current values
for gauges, interval percentiles and means for histograms. Each sample covers one
``metrics.sample_interval``: a histogram's percentile is computed from the bucket counts
*added during that interval* (linear interpolation inside the bucket, as PromQL's
histogram_quantile does), so a quiet interval stores nothing rather than a stale value.

Storage goes through the storage layer's metric interface (``record_metrics``, no wait:
losing the last samples in a crash is harmless). Roll-ups, once a minute, for the minutes
that are complete (a lag after their end, so late no-wait samples are in), and pruned
after ``metrics.rollup_retention_days``:

- On TimescaleDB the storage migration made ``metric_samples_1m`` a continuous aggregate;
  this module refreshes it for exactly those minutes (``refresh_continuous_aggregate`` on
  a pooled autocommit connection: it cannot run in the writer's transaction) and drops its
  chunks past the retention (a day each). No TimescaleDB background job is involved.
- Elsewhere (SQLite, PostgreSQL without TimescaleDB) it keeps ``metric_rollups_1m``
  itself: same columns (bucket, name, labels, n, avg, min, max), filled idempotently (the
  minute range is deleted and re-inserted in one transaction of the storage writer). It
  is a separate table name so that installing TimescaleDB later and running
  `kefu db upgrade` still creates the continuous aggregate.

Reads (``History.query``): ranges up to an hour come from raw samples, longer ones from
the roll-ups, bucketed so a chart gets a few hundred points.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from .storage.base import MetricSample, StorageUnavailable

log = logging.getLogger("kefu.timeseries")

ROLLUP_TABLE = "metric_rollups_1m"
TIMESCALE_VIEW = "metric_samples_1m"
ROLLUP_EVERY = 60.0

Snapshot = dict[str, dict[tuple, float]]  # sample name -> {sorted label items: value}


@dataclass(frozen=True)
class Series:
    name: str
    kind: str  # gauge | rate | quantile | mean
    source: str  # sample name (gauge, rate) or histogram family name (quantile, mean)
    unit: str
    help: str
    by: tuple[str, ...] = ()  # labels kept; the others are summed over
    q: float = 0.0
    where: tuple[tuple[str, str], ...] = ()  # only samples with these label values
    sparse: bool = False  # many label values: zero rates are not stored (read as 0)


def _q(name, source, q, unit, help, **kw):
    return Series(name, "quantile", source, unit, help, q=q, **kw)


SERIES: tuple[Series, ...] = (
    Series("messages_in_per_s", "rate", "kefu_messages_received_total", "1/s",
           "Customer messages reaching the desk per second.", by=("channel",)),
    Series("messages_out_per_s", "rate", "kefu_messages_sent_total", "1/s",
           "Bot, agent and system messages sent into conversations per second.", by=("channel",)),
    Series("mqtt_messages_in_per_s", "rate", "kefu_mqtt_messages_received_total", "1/s",
           "PUBLISH packets received by the broker per second."),
    Series("mqtt_messages_out_per_s", "rate", "kefu_mqtt_messages_sent_total", "1/s",
           "PUBLISH packets sent by the broker per second."),
    _q("message_latency_p50_seconds", "kefu_message_latency_seconds", 0.5, "s", "Median desk message latency."),
    _q("message_latency_p95_seconds", "kefu_message_latency_seconds", 0.95, "s", "95th percentile desk message latency."),
    _q("message_latency_p99_seconds", "kefu_message_latency_seconds", 0.99, "s", "99th percentile desk message latency."),
    Series("connections", "gauge", "kefu_connections", "1", "Open client connections.", by=("channel", "protocol")),
    Series("queue_length", "gauge", "kefu_queue_length", "1", "Conversations waiting, per team.", by=("team",)),
    Series("queue_wait_seconds", "gauge", "kefu_queue_oldest_wait_seconds", "s",
           "Longest current wait in each team queue.", by=("team",)),
    _q("queue_wait_p95_seconds", "kefu_queue_wait_seconds", 0.95, "s",
       "95th percentile of completed queue waits (queued to assigned), per team.", by=("team",)),
    Series("first_response_avg_seconds", "mean", "kefu_first_response_seconds", "s",
           "Average time from reaching a human queue to the first agent reply."),
    _q("first_response_p95_seconds", "kefu_first_response_seconds", 0.95, "s",
       "95th percentile first response time."),
    Series("handle_time_avg_seconds", "mean", "kefu_handle_seconds", "s", "Average handle time (agent held it)."),
    Series("resolution_time_avg_seconds", "mean", "kefu_resolution_seconds", "s",
           "Average time from creation to resolution."),
    Series("conversations_per_s", "rate", "kefu_conversations_created_total", "1/s", "Conversations opened per second."),
    Series("handoffs_per_s", "rate", "kefu_bot_handoffs_total", "1/s", "Bot-to-human handoffs per second."),
    Series("bot_resolved_per_s", "rate", "kefu_conversations_resolved_total", "1/s",
           "Conversations resolved without a human per second.", where=(("by", "bot"),)),
    Series("intents_per_s", "rate", "kefu_intents_total", "1/s", "Classified messages per second, by intent.",
           by=("intent",), sparse=True),
    Series("intent_confidence_avg", "mean", "kefu_intent_confidence", "1", "Average top-intent confidence."),
    _q("intent_latency_p95_seconds", "kefu_intent_latency_seconds", 0.95, "s", "95th percentile intent-engine latency."),
    Series("csat_avg", "mean", "kefu_csat_rating", "1", "Average CSAT rating (1-5) of ratings received."),
    Series("sla_breaches_per_s", "rate", "kefu_sla_breaches_total", "1/s", "SLA breaches per second.", by=("sla",)),
    Series("agents", "gauge", "kefu_agents", "1", "Agents by status.", by=("status",)),
    Series("agent_occupancy_ratio", "gauge", "kefu_agent_occupancy_ratio", "1",
           "Assigned conversations over online agents' capacity."),
    Series("rejected_per_s", "rate", "kefu_messages_rejected_total", "1/s", "Refused or dropped messages per second, "
           "by reason.", by=("reason",), sparse=True),
    _q("storage_write_p99_seconds", "kefu_storage_write_seconds", 0.99, "s", "99th percentile storage write latency."),
    Series("storage_pending_writes", "gauge", "kefu_storage_pending_writes", "1", "Writes waiting for their commit."),
)
SERIES_BY_NAME = {s.name: s for s in SERIES}

# Derived at read time from two stored rate series: (numerator, denominator, complement).
RATIOS = {
    "bot_handoff_ratio": ("handoffs_per_s", "conversations_per_s", False),
    "bot_containment_ratio": ("handoffs_per_s", "conversations_per_s", True),
}


# --------------------------------------------------------------------------- deriving samples


def snapshot(registry) -> Snapshot:
    out: Snapshot = {}
    for fam in registry.collect():
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = float(s.value)
    return out


def labels_text(items) -> str:
    """Canonical 'k=v,k2=v2' (the storage layer's label format); ',' and '=' in values become '_'."""
    return ",".join(f"{k}={str(v).replace(',', '_').replace('=', '_')}" for k, v in items)


def parse_labels(text: str) -> dict[str, str]:
    if not text:
        return {}
    return dict(part.split("=", 1) for part in text.split(","))


def _select(values: dict[tuple, float], s: Series, drop: tuple[str, ...] = ()) -> dict[tuple, float]:
    """Filter by ``where`` and sum over the labels not in ``by`` (and not in ``drop``)."""
    out: dict[tuple, float] = {}
    for key, v in values.items():
        d = dict(key)
        if any(d.get(k) != want for k, want in s.where):
            continue
        group = tuple((k, d.get(k, "")) for k in s.by) + tuple((k, d[k]) for k in drop if k in d)
        out[group] = out.get(group, 0.0) + v
    return out


def _delta(cur: dict[tuple, float], prev: dict[tuple, float]) -> dict[tuple, float]:
    out = {}
    for k, v in cur.items():
        p = prev.get(k, 0.0)
        out[k] = v - p if v >= p else v  # a counter reset: count from zero
    return out


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``q`` from cumulative (upper bound, count) pairs sorted by bound, linear within a bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # above the highest finite bound: report that bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def derive(prev: Snapshot, cur: Snapshot, dt: float) -> dict[str, dict[str, float]]:
    """Series values for the interval between two snapshots: {series: {labels text: value}}."""
    out: dict[str, dict[str, float]] = {}
    for s in SERIES:
        vals: dict[str, float] = {}
        if s.kind == "gauge":
            for key, v in _select(cur.get(s.source, {}), s).items():
                vals[labels_text(key)] = v
        elif s.kind == "rate":
            if dt <= 0:
                continue
            d = _delta(_select(cur.get(s.source, {}), s), _select(prev.get(s.source, {}), s))
            for key, v in d.items():
                if v == 0 and s.sparse:
                    continue
                vals[labels_text(key)] = v / dt
        elif s.kind == "mean":
            sums = _delta(_select(cur.get(s.source + "_sum", {}), s), _select(prev.get(s.source + "_sum", {}), s))
            counts = _delta(_select(cur.get(s.source + "_count", {}), s),
                            _select(prev.get(s.source + "_count", {}), s))
            for key, n in counts.items():
                if n > 0:
                    vals[labels_text(key)] = sums.get(key, 0.0) / n
        elif s.kind == "quantile":
            d = _delta(_select(cur.get(s.source + "_bucket", {}), s, ("le",)),
                       _select(prev.get(s.source + "_bucket", {}), s, ("le",)))
            groups: dict[tuple, list[tuple[float, float]]] = {}
            for key, n in d.items():
                le = float(dict(key)["le"])
                groups.setdefault(key[:len(s.by)], []).append((le, n))
            for key, bks in groups.items():
                bks.sort()
                v = bucket_quantile(s.q, bks)
                if v is not None:
                    vals[labels_text(key)] = v
        if vals:
            out[s.name] = vals
    return out


# --------------------------------------------------------------------------- roll-ups and reads


class History:
    """Stored series on one store: roll-up upkeep and range queries."""

    def __init__(self, store, *, rollup_retention_days: float = 400.0) -> None:
        self.store = store
        self.dialect = getattr(store, "dialect", "sqlite")
        self.timescale = bool(getattr(store, "timescale", False))
        self.rollup_retention_days = rollup_retention_days
        self.watermark: float | None = None  # start of the first minute not rolled up yet
        self.ready = False

    @property
    def rollup_source(self) -> str:
        return TIMESCALE_VIEW if self.timescale else ROLLUP_TABLE

    def _sql(self, sql: str) -> str:
        return self.store.q(sql)

    async def _write(self, fn):
        return await self.store.run_in_writer(fn)

    async def _read(self, fn):
        read = getattr(self.store, "_read", None)  # the SQL stores' reader pool; see docs/metrics.md
        if read is None:
            return await self.store.run_in_writer(fn)
        return await read(fn)

    async def setup(self) -> None:
        """Create the roll-up table (on TimescaleDB the migration made the continuous aggregate)."""
        if not self.timescale:
            ts = "REAL" if self.dialect == "sqlite" else "timestamptz"
            num = "REAL" if self.dialect == "sqlite" else "double precision"

            def create(conn):
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {ROLLUP_TABLE} (bucket {ts} NOT NULL, name TEXT NOT NULL, "
                    f"labels TEXT NOT NULL DEFAULT '', n INTEGER NOT NULL, avg {num} NOT NULL, min {num} NOT NULL, "
                    f"max {num} NOT NULL, PRIMARY KEY (name, labels, bucket))")
            await self._write(create)
        self.ready = True

    async def rollup(self, now: float, lag: float) -> int:
        """Roll up every complete minute ending at least ``lag`` seconds before ``now``; returns rows written."""
        hi = math.floor((now - lag) / 60.0) * 60.0
        q = self._sql
        if self.watermark is None:
            def start(conn):
                last = conn.execute(q(f"SELECT max(EPOCH(bucket)) FROM {self.rollup_source}")).fetchone()[0]
                if last is not None:
                    return float(last) + 60.0
                first = conn.execute(q("SELECT min(EPOCH(at)) FROM metric_samples")).fetchone()[0]
                return None if first is None else math.floor(float(first) / 60.0) * 60.0
            self.watermark = await self._read(start)
            if self.watermark is None:
                self.watermark = hi
                return 0
        lo = self.watermark
        if hi <= lo:
            return 0
        days = self.rollup_retention_days
        if self.timescale:
            import psycopg  # only PostgreSQL stores have TimescaleDB

            try:
                n = await self._read(lambda conn: self._refresh(conn, lo, hi, now - days * 86400.0 if days > 0 else None))
            except psycopg.Error as e:  # e.g. another node refreshing the same minutes: the next pass retries
                log.warning("metrics: roll-up refresh postponed: %s", str(e).strip().splitlines()[0] if str(e) else e)
                return 0
            self.watermark = hi
            return n
        minute = ("CAST(at / 60 AS INTEGER) * 60" if self.dialect == "sqlite"
                  else "date_bin(INTERVAL '1 minute', at, 'epoch'::timestamptz)")

        def fill(conn):
            conn.execute(q(f"DELETE FROM {ROLLUP_TABLE} WHERE bucket >= TS(?) AND bucket < TS(?)"), (lo, hi))
            cur = conn.execute(q(
                f"INSERT INTO {ROLLUP_TABLE} (bucket, name, labels, n, avg, min, max) "
                f"SELECT {minute}, name, labels, count(*), avg(value), min(value), max(value) FROM metric_samples "
                f"WHERE at >= TS(?) AND at < TS(?) GROUP BY 1, 2, 3"), (lo, hi))
            n = max(cur.rowcount, 0)
            if days > 0:
                conn.execute(q(f"DELETE FROM {ROLLUP_TABLE} WHERE bucket < TS(?)"), (now - days * 86400.0,))
            return n

        n = await self._write(fill)
        self.watermark = hi
        return n

    @staticmethod
    def _refresh(conn, lo: float, hi: float, cutoff: float | None) -> int:
        """TimescaleDB, on an autocommit connection: materialise the minutes [lo, hi), drop
        roll-up chunks wholly before ``cutoff``; returns the roll-up rows of those minutes."""
        conn.execute(f"CALL refresh_continuous_aggregate('{TIMESCALE_VIEW}', to_timestamp(%s), to_timestamp(%s))",
                     (lo, hi))
        if cutoff is not None:
            conn.execute(f"SELECT count(*) FROM drop_chunks('{TIMESCALE_VIEW}', older_than => to_timestamp(%s))",
                         (cutoff,))
        return int(conn.execute(f"SELECT count(*) FROM {TIMESCALE_VIEW} WHERE bucket >= to_timestamp(%s) "
                                "AND bucket < to_timestamp(%s)", (lo, hi)).fetchone()[0])

    async def query(self, names: list[str], start: float, end: float, step: float, *,
                    source: str = "raw") -> dict[str, list[dict[str, Any]]]:
        """{series: [{"labels": {...}, "points": [[t, avg, min, max, n], ...]}]} bucketed by ``step`` seconds;
        ``n`` is the number of samples in the bucket (a rate series' count in it is avg * n * interval).

        ``source`` "raw" reads samples, "rollup" the 1-minute roll-ups (counts weighted)."""
        q = self._sql
        step = max(1, int(step))
        if self.dialect == "sqlite":
            b = "CAST({col} / ? AS INTEGER) * ?"
        else:
            b = "floor(extract(epoch from {col}) / ?) * ?"
        if source == "raw":
            sql = (f"SELECT name, labels, {b.format(col='at')} AS b, avg(value), min(value), max(value), count(*) "
                   "FROM metric_samples WHERE name IN ({names}) AND at >= TS(?) AND at < TS(?) "
                   "GROUP BY name, labels, b ORDER BY name, labels, b")
        else:
            sql = (f"SELECT name, labels, {b.format(col='bucket')} AS b, sum(n * avg) / sum(n), min(min), max(max), "
                   "sum(n) "
                   f"FROM {self.rollup_source} WHERE name IN ({{names}}) AND bucket >= TS(?) AND bucket < TS(?) "
                   "GROUP BY name, labels, b ORDER BY name, labels, b")
        sql = q(sql.replace("{names}", ", ".join("?" * len(names))))
        params = (step, step, *names, start, end)
        rows = await self._read(lambda c: c.execute(sql, params).fetchall()) if names else []
        out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        cur_key = None
        for name, labels, bt, avg, mn, mx, n in rows:
            if (name, labels) != cur_key:
                cur_key = (name, labels)
                out[name].append({"labels": parse_labels(labels), "points": []})
            out[name][-1]["points"].append([float(bt), float(avg), float(mn), float(mx), int(n)])
        return out


# --------------------------------------------------------------------------- the sampler task


@dataclass
class Sampler:
    """Every ``interval`` seconds: refresh live gauges, derive series, store them, tell listeners."""

    metrics: Any
    store: Any = None
    interval: float = 10.0
    rollup_retention_days: float = 400.0
    clock: Callable[[], float] = time.time  # wall clock for sample times
    listeners: list[Callable[[float, dict], Any]] = field(default_factory=list)
    latest: dict[str, dict[str, float]] = field(default_factory=dict)
    latest_at: float | None = None
    history: History | None = None
    samples_written: int = 0
    failures: int = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self.store is not None:
            self.history = History(self.store, rollup_retention_days=self.rollup_retention_days)
            await self.history.setup()
        self._prev = snapshot(self.metrics.registry)
        self._prev_t = trio.current_time()
        self._next_rollup = trio.current_time() + ROLLUP_EVERY
        task_status.started(self)
        next_at = trio.current_time() + self.interval
        while True:
            await trio.sleep_until(next_at)
            next_at += self.interval
            if next_at < trio.current_time():  # fell behind (a long stall): do not burst to catch up
                next_at = trio.current_time() + self.interval
            await self.sample_once()

    async def sample_once(self) -> dict[str, dict[str, float]]:
        await self.metrics.refresh(force=True)
        cur = snapshot(self.metrics.registry)
        t = trio.current_time()
        values = derive(self._prev, cur, t - self._prev_t)
        self._prev, self._prev_t = cur, t
        at = self.clock()
        self.latest, self.latest_at = values, at
        if self.store is not None:
            batch = [MetricSample(name, v, at, labels) for name, by in values.items() for labels, v in by.items()]
            try:
                await self.store.record_metrics(batch)
                self.samples_written += len(batch)
            except StorageUnavailable as e:
                self.failures += 1
                log.warning("metrics: %d samples not stored: %s", len(batch), e.reason)
            if self.history is not None and t >= self._next_rollup:
                self._next_rollup = t + ROLLUP_EVERY
                try:
                    await self.history.rollup(at, lag=self.interval + 5.0)
                except StorageUnavailable as e:
                    log.warning("metrics: roll-up postponed: %s", e.reason)
        for fn in self.listeners:
            fn(at, values)
        return values


def range_plan(range_s: float, sample_interval: float) -> tuple[str, int]:
    """(source, step seconds) for a dashboard range: raw samples up to an hour, roll-ups beyond."""
    if range_s <= 3600:
        step = max(sample_interval, range_s / 240.0)
        return "raw", int(math.ceil(step / sample_interval) * sample_interval)
    step = max(60.0, range_s / 300.0)
    return "rollup", int(math.ceil(step / 60.0) * 60)


def ratio_points(num: list[dict], den: list[dict], complement: bool) -> list[list[float]]:
    """Per bucket, sum(num)/sum(den) over label sets (1 - that with ``complement``); buckets without
    any denominator are left out."""
    def sums(series):
        acc: dict[float, float] = {}
        for s in series:
            for t, avg, _mn, _mx, n in s["points"]:
                acc[t] = acc.get(t, 0.0) + avg * n
        return acc

    n, d = sums(num), sums(den)
    out = []
    for t in sorted(d):
        if d[t] > 0:
            r = min(1.0, n.get(t, 0.0) / d[t])
            out.append([t, 1.0 - r if complement else r])
    return out
