"""The operations service of one node: metrics, stored history, alerts, and its self-description.

``kefu/app.py`` makes one ``Ops``, attaches what runs (broker, bridge, desk, store,
intent engine) and starts ``Ops.run`` in the root nursery. The HTTP side
(``kefu/ops_web.py``) and `kefu status` read from it: ``status()`` is what runs and where,
``series()`` the dashboard's history.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import trio

from . import __version__
from .alerts import Alerts, rule_problems
from .metrics import Metrics
from .timeseries import RATIOS, SERIES_BY_NAME, Sampler, range_plan, ratio_points

log = logging.getLogger("kefu.ops")

RANGES = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
RAW_TAIL_S = 180.0  # the newest minutes are read raw: roll-ups of them are not complete yet

# What the dashboard asks for when it names nothing.
DASHBOARD_SERIES = (
    "messages_in_per_s", "messages_out_per_s", "mqtt_messages_in_per_s", "mqtt_messages_out_per_s",
    "message_latency_p50_seconds", "message_latency_p95_seconds", "message_latency_p99_seconds",
    "connections", "queue_length", "queue_wait_seconds", "agents", "agent_occupancy_ratio",
    "intents_per_s", "bot_containment_ratio", "conversations_per_s", "handoffs_per_s", "sla_breaches_per_s", "csat_avg", "first_response_avg_seconds",
    "handle_time_avg_seconds", "rejected_per_s",
)


class OpsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Ops:
    def __init__(self, cfg, *, metrics: Metrics | None = None, clock=time.time) -> None:
        """Raises ``ConfigError`` (key paths) for bad [[alerts]] rules."""
        problems = rule_problems(cfg.alerts)
        if problems:
            from .config import ConfigError

            raise ConfigError(problems)
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.started_at = clock()
        self.store = None
        self.sampler: Sampler | None = None
        self.alerts: Alerts | None = None
        self.lines: list[str] = []
        self.http_url: str | None = None  # where /metrics is served (the bridge's listener, or our own)

    # ------------------------------------------------------------------ wiring

    def attach(self, *, broker=None, bridge=None, desk=None, store=None, intent=None):
        """Attach running parts. Returns the store proxy timing writes (or None without a store)."""
        m = self.metrics
        if intent is not None:
            m.attach_intent(intent)
        if broker is not None:
            m.attach_broker(broker)
        if bridge is not None:
            m.attach_bridge(bridge)
        if desk is not None:
            m.attach_desk(desk)
        if store is not None:
            proxy = m.attach_store(store)
            self.store = proxy.wrapped
            return proxy
        return None

    def routes(self) -> list:
        """/metrics, /dashboard, /ops/* for the bridge's HTTP app (``extra_routes``)."""
        if not self.cfg.metrics.enabled:
            return []
        from .ops_web import routes

        return routes(self)

    async def start(self, nursery, *, broker=None, bridge=None, desk=None, store=None, intent=None,
                    announce=None) -> "Ops":
        """What kefu/app.py calls once the broker and bridge run: attach them, start sampling and
        alerts, and serve the routes on listeners.http when the bridge does not (no desk).
        Says in ``announce`` lines where /metrics is, or why it is not served."""
        say = announce or (lambda line: None)
        if not self.cfg.metrics.enabled:
            say("kefu: metrics off (metrics.enabled = false): no /metrics, dashboard, history or alerts")
            return self
        self.attach(broker=broker, bridge=bridge, desk=desk, store=store, intent=intent)
        await nursery.start(self.run)
        for line in self.lines:
            say(line)
        lc = self.cfg.listeners.http
        if not lc.enabled:
            say("kefu: /metrics and /dashboard not served: listeners.http is disabled (metrics are still sampled"
                + (" and stored)" if self.sampler and self.sampler.history else ")"))
            return self
        if bridge is not None and getattr(bridge, "http_url", ""):
            self.http_url = bridge.http_url
        else:
            from .ops_web import serve_alone

            self.http_url = await nursery.start(serve_alone, self)
        say(f"kefu: metrics on {self.http_url}/metrics, dashboard on {self.http_url}/dashboard")
        if self.cfg.metrics.access == "open" and lc.host not in ("127.0.0.1", "::1", "localhost"):
            port = self.http_url.rsplit(":", 1)[-1].split("/", 1)[0] if self.http_url else lc.port  # the bound one
            say(f"kefu: /metrics and /ops/* are open to anyone who reaches {lc.host or '*'}:{port}; "
                "set metrics.access = \"operator\" to require an operator API token (docs/security.md)")
        return self

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Sampler (history) and alerts until cancelled; ``started(self)``."""
        mc = self.cfg.metrics
        if self.cfg.alerts:
            self.alerts = Alerts(list(self.cfg.alerts), node=os.uname().nodename)
        store = self.store if mc.history else None
        if mc.history and self.store is None:
            self.lines.append("kefu: metric history not stored: no storage is open")
        self.sampler = Sampler(self.metrics, store, interval=mc.sample_interval,
                               rollup_retention_days=mc.rollup_retention_days, clock=self.clock)
        if self.alerts is not None:
            self.sampler.listeners.append(self.alerts.observe)
        async with trio.open_nursery() as n:
            await n.start(self.sampler.run)
            if self.alerts is not None:
                await n.start(self.alerts.run)
            task_status.started(self)

    # ------------------------------------------------------------------ what `kefu status` shows

    def listeners(self) -> list[dict[str, str]]:
        m = self.metrics
        out = []
        if m.broker is not None:
            for a in m.broker.addresses:
                out.append({"name": a.key, "url": a.url})
        b = m.bridge
        lc = self.cfg.listeners
        if b is not None and getattr(b, "ws_url", ""):
            out.append({"name": "listeners.ws", "url": b.ws_url + lc.ws.mqtt_path + " " + lc.ws.chat_path})
        http = self.http_url or (getattr(b, "http_url", "") if b is not None else "")
        if http:
            out.append({"name": "listeners.http", "url": http})
        return out

    def storage_status(self) -> dict[str, Any]:
        s = self.store
        if s is None:
            return {"backend": "none", "detail": "no storage open"}
        sc = self.cfg.storage
        out: dict[str, Any] = {"backend": getattr(s, "backend", "?"),
                               "where": sc.path if sc.backend == "sqlite" else f"{_safe_dsn(sc.dsn)} schema {sc.pg_schema}"}
        try:
            h = s.health()
            out.update(ready=h.ready, reason=h.reason, pending=h.pending, features=dict(h.features))
        except Exception as e:  # noqa: BLE001
            out.update(ready=False, reason=str(e))
        ts = bool(getattr(s, "timescale", False))
        if out["backend"] == "postgres":
            out["timescaledb"] = "active" if ts else "not active"
        hist = self.sampler.history if self.sampler else None
        out["rollups"] = (hist.rollup_source + (" (continuous aggregate)" if hist.timescale else " (kefu roll-up job)")
                          if hist is not None else "off")
        return out

    def status(self) -> dict[str, Any]:
        m = self.metrics
        live = m.live()
        now = self.clock()
        sampler = self.sampler
        http = self.http_url or (getattr(m.bridge, "http_url", "") if m.bridge is not None else "")
        return {
            "node": os.uname().nodename,
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": now - self.started_at,
            "listeners": self.listeners(),
            "metrics_url": http + "/metrics" if http else None,
            "storage": self.storage_status(),
            "connections": {f"{c}/{p}": n for (c, p), n in sorted(m.connections().items())},
            "desk": m.desk is not None,
            "queues": {t: {"waiting": n, "oldest_wait_s": w} for t, (n, w) in live["teams"].items()},
            "agents": dict(live["agents"]),
            "agent_roster": dict(live["roster"]),
            "occupancy": live["occupancy"],
            "rejected": m.rejected(),
            "alerts_firing": self.alerts.firing() if self.alerts else [],
            "sampler": {"interval_s": self.cfg.metrics.sample_interval, "history": sampler is not None and sampler.history is not None,
                        "samples_written": sampler.samples_written if sampler else 0, "last_at": sampler.latest_at if sampler else None},
        }

    # ------------------------------------------------------------------ history for the dashboard and `kefu stats`

    async def series(self, range_name: str, names: list[str] | None = None, *, end: float | None = None) -> dict[str, Any]:
        if range_name not in RANGES:
            raise OpsError(400, f"range: expected one of {', '.join(RANGES)}")
        hist = self.sampler.history if self.sampler else None
        if hist is None:
            raise OpsError(503, "metric history is off (metrics.history = false, or no storage)")
        names = list(names or DASHBOARD_SERIES)
        bad = [n for n in names if n not in SERIES_BY_NAME and n not in RATIOS]
        if bad:
            raise OpsError(400, f"unknown series: {', '.join(bad)}")
        return await query_history(hist, names, RANGES[range_name], self.cfg.metrics.sample_interval,
                                   end=self.clock() if end is None else end, range_name=range_name)


async def query_history(hist, names: list[str], range_s: float, sample_interval: float, *, end: float,
                        range_name: str = "") -> dict[str, Any]:
    """Read ``names`` (stored series or RATIOS) over ``range_s`` seconds before ``end``."""
    stored = sorted({n for n in names if n in SERIES_BY_NAME} | {d for n in names if n in RATIOS for d in RATIOS[n][:2]})
    start = end - range_s
    source, step = range_plan(range_s, sample_interval)
    if source == "raw":
        data = await hist.query(stored, start, end, step, source="raw")
        described = "raw samples"
    else:
        cut = max(start, (end - RAW_TAIL_S) // step * step)
        data = await hist.query(stored, start, cut, step, source="rollup")
        tail = await hist.query(stored, cut, end, step, source="raw")
        for name, series in tail.items():
            by = {tuple(sorted(s["labels"].items())): s for s in data[name]}
            for s in series:
                key = tuple(sorted(s["labels"].items()))
                if key in by:
                    by[key]["points"].extend(s["points"])
                else:
                    data[name].append(s)
        described = f"1-minute roll-ups ({hist.rollup_source}) and raw samples for the last {int(RAW_TAIL_S)} s"
    out_series: dict[str, Any] = {}
    for n in names:
        if n in RATIOS:
            num, den, comp = RATIOS[n]
            out_series[n] = [{"labels": {}, "points": [[t, v, v, v, 1] for t, v in ratio_points(data[num], data[den], comp)]}]
        else:
            out_series[n] = data[n]
    units = {n: (SERIES_BY_NAME[n].unit if n in SERIES_BY_NAME else "1") for n in names}
    return {"range": range_name, "start": start, "end": end, "step": step, "source": described,
            "units": units, "series": out_series}


def _safe_dsn(dsn: str) -> str:
    """A DSN without its password."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        u = urlsplit(dsn)
    except ValueError:
        return "(unparsable dsn)"
    if u.password:
        netloc = u.netloc.replace(":" + u.password + "@", ":***@")
        return urlunsplit(u._replace(netloc=netloc))
    return dsn
