"""kefu's metrics: one Prometheus registry per running node, fed without slowing anyone down.

Why this shape: the parts being measured (broker, bridge, desk, storage, intent engine) are
written by others and must stay fast, so nothing here adds work to a per-packet path.

* The broker's hot path already counts in plain ints (``Router.stats``: messages, bytes,
  drops, malformed packets; the bridge's ``WsStats``, the SM4 keyring's rejection
  counter). A custom ``Collector`` reads those ints only when someone scrapes or samples,
  so an MQTT PUBLISH costs no more than before.
* The desk is observed through its closed hook set (``kefu.hooks``): notification hooks
  on its events (created, status changed, message created, CSAT, SLA) and the
  ``message_received`` filter (returns None, i.e. changes nothing) to time a message from
  entering the desk to its fan-out. The handlers are a few dict operations and one
  prometheus-client ``inc``/``observe`` each, per desk event, not per MQTT packet.
* Live figures that are state, not events (queue lengths and waits, agents by status,
  occupancy) are read from the desk's store by ``refresh()``: the sampler calls it before
  each sample and the /metrics handler before each scrape (at most once a second).
* Storage write latency: ``attach_store`` returns a thin proxy that times the awaited
  (committed) writes; the intent engine: ``instrument_classifier`` wraps the callable the
  desk is given.

A ``Metrics`` object is per node (its own ``CollectorRegistry``), so tests and several
nodes in one process never mix their counts. Names, units and labels are documented in
docs/metrics.md; tests/ops/test_metrics.py parses the exposition and checks them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from . import __version__, edge

log = logging.getLogger("kefu.metrics")

# Bucket bounds, in the metric's unit.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400, 259200)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
INTENT_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CSAT_BUCKETS = (1, 2, 3, 4, 5)

# Rejection reasons (label ``reason`` of kefu_messages_rejected_total); a closed set so a
# dashboard or alert can rely on them.
REJECT_REASONS = ("acl", "malformed", "decrypt", "queue_overflow", "quota", "chat_refused", "intent_overloaded")

_TRACK_MAX = 200_000  # per-conversation timers kept (queued/assigned/awaiting reply); oldest dropped beyond
_REFRESH_MIN_S = 1.0

_MQTT_VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}


def _bounded_set(d: dict, key, value) -> None:
    d[key] = value
    if len(d) > _TRACK_MAX:
        d.pop(next(iter(d)))


class Metrics:
    """Every kefu metric of one node. Create one, attach the running parts, scrape."""

    def __init__(self, *, process: bool = True, clock: Callable[[], float] = time.time) -> None:
        r = self.registry = CollectorRegistry()
        self.clock = clock
        if process:
            ProcessCollector(registry=r)

        # --- desk traffic (from desk events) ------------------------------------------------
        self.messages_received = Counter(
            "kefu_messages_received", "Customer messages that reached the desk, by conversation channel.",
            ["channel"], registry=r)
        self.messages_sent = Counter(
            "kefu_messages_sent", "Messages the desk sent into conversations (not private notes), by channel "
            "and sender kind (bot, agent, system).", ["channel", "sender"], registry=r)
        self.message_latency = Histogram(
            "kefu_message_latency_seconds", "Time from a customer message entering the desk to its fan-out to "
            "the conversation's topics (the agent and the customer's other devices) being done.",
            ["channel"], buckets=LATENCY_BUCKETS, registry=r)
        self.conversations_created = Counter(
            "kefu_conversations_created", "Conversations opened, by channel.", ["channel"], registry=r)
        self.conversations_resolved = Counter(
            "kefu_conversations_resolved", "Conversations resolved, by who had them: bot (never reached a "
            "human) or agent.", ["by"], registry=r)
        self.handoffs = Counter(
            "kefu_bot_handoffs", "Conversations the bot handed to a human queue, by reason.", ["reason"], registry=r)
        self.queue_wait = Histogram(
            "kefu_queue_wait_seconds", "Time a conversation waited in a team queue until it was assigned.",
            ["team"], buckets=WAIT_BUCKETS, registry=r)
        self.queue_abandoned = Counter(
            "kefu_queue_abandoned", "Conversations that left a queue without being assigned (resolved or "
            "closed while waiting).", ["team"], registry=r)
        self.first_response = Histogram(
            "kefu_first_response_seconds", "Time from a conversation reaching a human queue (handoff or reopen) "
            "to the first agent reply.", ["team"], buckets=WAIT_BUCKETS, registry=r)
        self.handle_time = Histogram(
            "kefu_handle_seconds", "Time an agent held a conversation: from assignment to resolve, transfer or "
            "requeue.", ["team"], buckets=WAIT_BUCKETS, registry=r)
        self.resolution_time = Histogram(
            "kefu_resolution_seconds", "Time from a conversation's creation to its resolution, by who resolved "
            "it (bot or agent).", ["by"], buckets=WAIT_BUCKETS, registry=r)
        self.csat = Histogram(
            "kefu_csat_rating", "Customer satisfaction ratings received (1 poor .. 5 great).",
            buckets=CSAT_BUCKETS, registry=r)
        self.sla_breaches = Counter(
            "kefu_sla_breaches", "Ticket SLA targets missed, by SLA (first_response, resolution) and priority.",
            ["sla", "priority"], registry=r)

        # --- intent engine (instrument_classifier) --------------------------------------------
        self.intents = Counter(
            "kefu_intents", "Customer messages classified, by intent (\"out_of_scope\" when the engine "
            "declined).", ["intent"], registry=r)
        self.intent_confidence = Histogram(
            "kefu_intent_confidence", "Calibrated confidence of the top intent (0..1).",
            buckets=CONFIDENCE_BUCKETS, registry=r)
        self.intent_latency = Histogram(
            "kefu_intent_latency_seconds", "Time to classify one message, queueing in the intent service included.",
            buckets=INTENT_LATENCY_BUCKETS, registry=r)
        self.intent_early_exit = Counter(
            "kefu_intent_early_exit", "Messages the intent model answered at its early exit (lower layers only; "
            "divided by kefu_intents: the share that took the fast path).", registry=r)
        self.intent_errors = Counter(
            "kefu_intent_errors", "Classification calls that failed (the message goes on without an intent).",
            registry=r)

        # --- storage (attach_store) ------------------------------------------------------------
        self.storage_write = Histogram(
            "kefu_storage_write_seconds", "Time from a write's submission to its commit (group commit included), "
            "by operation.", ["op"], buckets=LATENCY_BUCKETS, registry=r)

        # --- plain-int state read by the collector ---------------------------------------------
        self.broker = None
        self.intent_service = None
        self.bridge = None
        self.desk = None
        self.store = None
        self.extra_rejects: dict[str, int] = {reason: 0 for reason in REJECT_REASONS}
        self._created = 0
        self._handoffs = 0
        self._live: dict[str, Any] = {"teams": {}, "agents": {}, "occupancy": None, "roster": {}, "at": None}
        self._teams_seen: set[str] = set()
        self._last_refresh = -1e18
        # per-conversation timers, keyed by conversation id
        self._t_in: dict[str, float] = {}
        self._queued_at: dict[str, float] = {}
        self._handling: dict[str, tuple[float, str]] = {}
        self._awaiting_reply: dict[str, tuple[float, str]] = {}
        self._children: dict[tuple, Any] = {}
        r.register(_LiveCollector(self))

    # ------------------------------------------------------------------ attaching parts

    def attach_broker(self, broker) -> None:
        """The embedded broker: its plain-int ``router.stats`` and live connections."""
        self.broker = broker

    def attach_bridge(self, bridge) -> None:
        """The bridge (``kefu.bridge.service.Bridge``): WebSocket and /chat connection counts."""
        self.bridge = bridge

    def attach_desk(self, desk) -> None:
        """Observe a ``kefu.desk.Desk`` through its hooks; its store feeds the live gauges. Idempotent."""
        if self.desk is desk:
            return
        if self.desk is not None:
            raise ValueError("this Metrics already observes another desk")
        self.desk = desk
        hooks = desk.hooks
        hooks.register("message_received", self._on_message_received)
        hooks.register("message_created", self._on_message_created)
        hooks.register("conversation_created", self._on_conversation_created)
        hooks.register("conversation_status_changed", self._on_status_changed)
        hooks.register("csat_received", self._on_csat)
        hooks.register("sla_breached", self._on_sla)

    def attach_store(self, store):
        """Read the store's health and SM4 rejections; returns a proxy timing committed writes.

        Give the proxy to the parts that write (broker persistence, desk) to get
        kefu_storage_write_seconds; the store itself is unchanged.
        """
        if isinstance(store, MeasuredStore):
            store = store.wrapped
        if self.store is not store:
            self.store = store
            self._measured = MeasuredStore(store, self.storage_write)
        return self._measured

    def attach_intent(self, service) -> None:
        """The intent service (``kefu.nlp.service.IntentService``): its queue and batch counters."""
        self.intent_service = service

    def instrument_classifier(self, classify: Callable[[str], Awaitable[Any]]) -> Callable[[str], Awaitable[Any]]:
        """Wrap the desk's ``classify(text)``: count intents, confidence and latency."""
        intents, conf, lat, errors = self.intents, self.intent_confidence, self.intent_latency, self.intent_errors
        early = self.intent_early_exit
        overloaded = self.extra_rejects
        perf = time.perf_counter

        async def classify_measured(text: str):
            t0 = perf()
            try:
                pred = await classify(text)
            except Exception as e:
                errors.inc()
                if type(e).__name__ == "Overloaded":
                    overloaded["intent_overloaded"] += 1
                raise
            lat.observe(perf() - t0)
            if pred is not None:
                intent = "out_of_scope" if getattr(pred, "out_of_scope", False) else (getattr(pred, "intent", None) or "none")
                intents.labels(intent).inc()
                c = getattr(pred, "confidence", None)
                if c is not None:
                    conf.observe(c)
                if getattr(pred, "early_exit", False):
                    early.inc()
            return pred

        return classify_measured

    def reject(self, reason: str, n: int = 1) -> None:
        """Count messages refused for ``reason`` (one of REJECT_REASONS) by code that has no counter of its own."""
        if reason not in self.extra_rejects:
            raise ValueError(f"unknown rejection reason {reason!r}; known: {', '.join(REJECT_REASONS)}")
        self.extra_rejects[reason] += n

    # ------------------------------------------------------------------ desk hooks

    def _on_message_received(self, payload) -> None:
        _bounded_set(self._t_in, payload.conv_id, time.perf_counter())
        return None  # a filter that changes nothing

    def _child(self, metric, *labels):
        """A bound child, cached: ``labels()`` costs more than the ``inc()`` itself (one per message here)."""
        key = (id(metric), labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def _on_message_created(self, payload) -> None:
        d = payload.event.data
        msg = d.get("message") or {}
        if msg.get("private"):
            return
        conv = d.get("conversation") or {}
        channel = conv.get("channel") or "unknown"
        kind = (msg.get("author") or {}).get("kind", "")
        cid = conv.get("id", "")
        if kind == "customer":
            self._child(self.messages_received, channel).inc()
            t0 = self._t_in.pop(cid, None)
            if t0 is not None:
                self._child(self.message_latency, channel).observe(time.perf_counter() - t0)
            return
        self._child(self.messages_sent, channel, kind or "unknown").inc()
        if kind == "agent":
            waiting = self._awaiting_reply.pop(cid, None)
            if waiting is not None:
                self.first_response.labels(waiting[1]).observe(max(0.0, payload.event.at - waiting[0]))

    def _on_conversation_created(self, payload) -> None:
        conv = payload.event.data.get("conversation") or {}
        self.conversations_created.labels(conv.get("channel") or "unknown").inc()
        self._created += 1

    def _on_status_changed(self, payload) -> None:
        ev = payload.event
        d = ev.data
        conv = d.get("conversation") or {}
        cid = conv.get("id", "")
        frm, to, at = d.get("from"), d.get("to"), ev.at
        team = conv.get("team") or ""
        if frm == "queued":
            t0 = self._queued_at.pop(cid, None)
            if t0 is not None:
                qteam = d.get("previous_team") or team
                if to == "assigned":
                    self.queue_wait.labels(qteam).observe(max(0.0, at - t0))
                elif to in ("resolved", "closed"):
                    self.queue_abandoned.labels(qteam).inc()
        if frm == "assigned":
            held = self._handling.pop(cid, None)
            if held is not None:
                self.handle_time.labels(held[1]).observe(max(0.0, at - held[0]))
        if to == "queued":
            _bounded_set(self._queued_at, cid, at)
            if frm == "bot":
                self.handoffs.labels(d.get("reason") or "handoff").inc()
                self._handoffs += 1
            if frm in ("bot", "resolved") or cid not in self._awaiting_reply:
                _bounded_set(self._awaiting_reply, cid, (at, team))
        elif to == "assigned":
            _bounded_set(self._handling, cid, (at, team))
        elif to == "resolved":
            by = "bot" if frm == "bot" else "agent"
            self.conversations_resolved.labels(by).inc()
            created = conv.get("created_at")
            if isinstance(created, (int, float)):
                self.resolution_time.labels(by).observe(max(0.0, at - created))
        if to in ("resolved", "closed"):
            self._awaiting_reply.pop(cid, None)
            self._queued_at.pop(cid, None)
            self._t_in.pop(cid, None)

    def _on_csat(self, payload) -> None:
        rating = payload.event.data.get("rating")
        if isinstance(rating, int) and 1 <= rating <= 5:
            self.csat.observe(rating)

    def _on_sla(self, payload) -> None:
        d = payload.event.data
        ticket = d.get("ticket") or {}
        self.sla_breaches.labels(d.get("sla") or "unknown", ticket.get("priority") or "unknown").inc()

    # ------------------------------------------------------------------ live state

    async def refresh(self, *, force: bool = False) -> None:
        """Read queues and agents from the desk's store (at most once a second unless forced)."""
        desk = self.desk
        mono = time.monotonic()
        if desk is None or (not force and mono - self._last_refresh < _REFRESH_MIN_S):
            return
        self._last_refresh = mono
        store = desk.store
        try:
            waiting = await store.waiting()
            agents = await store.agents()
            loads = await store.loads()
        except Exception:  # noqa: BLE001 - a store outage must not break /metrics; shown as stale
            log.warning("metrics: reading queues and agents from the desk store failed", exc_info=True)
            return
        now = desk.now()
        teams: dict[str, list] = {}
        for c in waiting:
            t = c.team or ""
            slot = teams.setdefault(t, [0, 0.0])
            slot[0] += 1
            if c.queued_at is not None:
                slot[1] = max(slot[1], now - c.queued_at)
        status_counts = {"online": 0, "away": 0, "offline": 0}
        cap = busy = 0
        roster = {}
        for a in agents:
            st = getattr(a.status, "value", a.status)
            status_counts[st] = status_counts.get(st, 0) + 1
            roster[a.id] = {"status": st, "load": loads.get(a.id, 0), "capacity": a.capacity}
            self._teams_seen.update(a.teams)
            if st == "online":
                cap += a.capacity
                busy += min(loads.get(a.id, 0), a.capacity)
        self._teams_seen.update(teams)
        self._live = {
            "teams": {t: tuple(teams.get(t, (0, 0.0))) for t in sorted(self._teams_seen)},
            "agents": status_counts,
            "occupancy": (busy / cap) if cap else None,
            "roster": roster,
            "at": now,
        }

    def live(self) -> dict[str, Any]:
        """The last ``refresh()``: {"teams": {team: (waiting, oldest wait s)}, "agents": {...}, ...}."""
        return self._live

    # ------------------------------------------------------------------ exposition

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def rejected(self) -> dict[str, int]:
        """Rejected or dropped messages since start, by reason (what kefu_messages_rejected_total shows)."""
        out = dict(self.extra_rejects)
        broker = self.broker
        if broker is not None:
            st = broker.router.stats
            out["malformed"] += st.malformed
            out["queue_overflow"] += st.dropped
            out["acl"] += getattr(broker.router, "acl_denied", 0)
            out["quota"] += sum(getattr(broker.router, "quota_refused", {}).values())
        chat = getattr(self.bridge, "chat", None)
        if chat is not None:
            out["chat_refused"] += getattr(chat, "errors", 0)
        kr = self._keyring()
        if kr is not None:
            out["decrypt"] += sum(kr.rejects.totals.values())
        return out

    def _keyring(self):
        keys = getattr(self.store, "keys", None)
        return getattr(keys, "keyring", None)

    def connections(self) -> dict[tuple[str, str], int]:
        """Open client connections by (channel, protocol)."""
        out: dict[tuple[str, str], int] = {}
        broker = self.broker
        if broker is not None:
            for conn in list(broker.connections):
                stype = type(conn.stream).__name__
                channel = "mqtts" if stype == "SSLStream" else ("mqtt" if stype == "SocketStream" else "mqtt-ws")
                version = _MQTT_VERSIONS.get(conn.proto.version, "connecting")
                out[(channel, version)] = out.get((channel, version), 0) + 1
        chat = getattr(self.bridge, "chat", None)
        if chat is not None:
            out[("chat", "kefu-chat-1")] = getattr(chat, "connections", 0)
        return out

    def handoff_ratio(self) -> float | None:
        return self._handoffs / self._created if self._created else None


class _LiveCollector:
    """Families computed at collect time from the attached parts' own counters and state."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def describe(self):
        return []  # families vary with what is attached; no up-front description

    def collect(self):
        m = self.m
        info = GaugeMetricFamily("kefu_build_info", "kefu version (value always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        conns = GaugeMetricFamily("kefu_connections", "Open client connections, by channel (mqtt, mqtts, mqtt-ws, "
                                  "chat) and protocol version.", labels=["channel", "protocol"])
        for (channel, proto), n in sorted(m.connections().items()):
            conns.add_metric([channel, proto], n)
        yield conns

        rej = CounterMetricFamily("kefu_messages_rejected", "Messages refused or dropped, by reason: acl (not "
                                  "authorised), malformed (bad MQTT packet), decrypt (SM4 envelope refused), "
                                  "queue_overflow (client queue full), quota (an mqtt quota: retained, subscriptions, sessions, "
                                  "stored bytes), chat_refused (bad or rate-limited /chat "
                                  "frame), intent_overloaded (intent queue full).", labels=["reason"])
        for reason, n in m.rejected().items():
            rej.add_metric([reason], n)
        yield rej

        broker = m.broker
        if broker is not None:
            router = broker.router
            st = router.stats
            for name, doc, value in (
                ("kefu_mqtt_messages_received", "PUBLISH packets received by the broker (wills included).",
                 st.messages_received),
                ("kefu_mqtt_messages_sent", "PUBLISH packets sent by the broker.", st.messages_sent),
                ("kefu_mqtt_received_bytes", "Bytes received by the broker.", st.bytes_received),
                ("kefu_mqtt_sent_bytes", "Bytes sent by the broker.", st.bytes_sent),
            ):
                yield CounterMetricFamily(name, doc, value=value)
            yield GaugeMetricFamily("kefu_mqtt_sessions", "MQTT sessions held (connected or persistent).",
                                    value=len(router.sessions))
            yield GaugeMetricFamily("kefu_mqtt_subscriptions", "MQTT subscriptions.", value=router.subscription_count)
            yield GaugeMetricFamily("kefu_mqtt_retained_messages", "Retained messages.", value=router.retained.count)
            pa = getattr(router, "password_auth", None)
            if pa is not None:
                fails = CounterMetricFamily("kefu_auth_failures", "Refused MQTT logins, by reason: bad_password, "
                                            "unknown_user, throttled (refused without a password check during "
                                            "back-off).", labels=["reason"])
                for reason, n in sorted(pa.failures.items()):
                    fails.add_metric([reason], n)
                yield fails
                yield CounterMetricFamily("kefu_auth_cache_hits", "Logins accepted from the cache of successful "
                                          "password checks (no scrypt).", value=pa.cache_hits)
        yield CounterMetricFamily("kefu_connection_errors", "Connections closed after an unexpected error in their "
                                  "handler (the error is logged; other connections are not affected).",
                                  value=edge.contained["count"])

        svc = m.intent_service
        if svc is not None:
            yield GaugeMetricFamily("kefu_intent_queue_length", "Messages waiting for the intent engine.",
                                    value=svc.queued)
            yield CounterMetricFamily("kefu_intent_batches", "Micro-batches the intent engine ran.", value=svc.batches)
            yield CounterMetricFamily("kefu_intent_batched_messages", "Messages classified in those batches "
                                      "(divided by batches: the mean batch size).", value=svc.messages)
            yield GaugeMetricFamily("kefu_intent_workers", "Classification worker threads.",
                                    value=getattr(svc, "workers", 1))
            yield GaugeMetricFamily("kefu_intent_workers_busy", "Classification workers running a batch now.",
                                    value=getattr(svc, "busy", 0))

        live = m._live
        if m.desk is not None:
            ql = GaugeMetricFamily("kefu_queue_length", "Conversations waiting in a team queue.", labels=["team"])
            qw = GaugeMetricFamily("kefu_queue_oldest_wait_seconds", "How long the longest-waiting conversation of "
                                   "a team queue has waited (0 when the queue is empty).", labels=["team"])
            for team, (n, oldest) in live["teams"].items():
                ql.add_metric([team], n)
                qw.add_metric([team], oldest)
            yield ql
            yield qw
            ag = GaugeMetricFamily("kefu_agents", "Agents by presence status.", labels=["status"])
            for status, n in sorted(live["agents"].items()):
                ag.add_metric([status], n)
            yield ag
            if live["occupancy"] is not None:
                yield GaugeMetricFamily("kefu_agent_occupancy_ratio", "Assigned conversations over the capacity of "
                                        "online agents (0..1).", value=live["occupancy"])
            ratio = m.handoff_ratio()
            if ratio is not None:
                yield GaugeMetricFamily("kefu_bot_handoff_ratio", "Handoffs to a human over conversations created, "
                                        "since start (0..1).", value=ratio)
                yield GaugeMetricFamily("kefu_bot_containment_ratio", "Conversations the bot kept (1 - handoff "
                                        "ratio), since start (0..1).", value=max(0.0, 1.0 - ratio))
            wh = getattr(m.desk, "webhooks", None)
            if wh is not None:
                fam = CounterMetricFamily("kefu_webhook_deliveries", "Desk webhook deliveries by endpoint and "
                                          "result (delivered, failed, dropped, retried).", labels=["endpoint", "result"])
                for ep in wh.endpoints:
                    s = wh.stats(ep.id)
                    for result in ("delivered", "failed", "dropped", "retries"):
                        fam.add_metric([ep.id, "retried" if result == "retries" else result], getattr(s, result))
                yield fam

        store = m.store
        if store is not None:
            try:
                h = store.health()
            except Exception:  # noqa: BLE001
                h = None
            if h is not None:
                yield GaugeMetricFamily("kefu_storage_ready", "1 while the database takes writes, 0 during an outage.",
                                        value=1 if h.ready else 0)
                yield GaugeMetricFamily("kefu_storage_pending_writes", "Writes waiting for their commit.",
                                        value=h.pending)
            stats = getattr(store, "stats", None)
            if stats is not None:
                st = stats()
                yield CounterMetricFamily("kefu_storage_commits", "Transactions committed by the storage writer "
                                          "(group commit: many writes each).", value=st.get("commits", 0))
                yield CounterMetricFamily("kefu_storage_committed_writes", "Write operations committed.",
                                          value=st.get("committed_ops", 0))
            kr = m._keyring()
            if kr is not None:
                fam = CounterMetricFamily("kefu_sm4_rejected", "SM4 envelopes refused, by reason.", labels=["reason"])
                for reason, n in sorted(kr.rejects.totals.items()):
                    fam.add_metric([reason], n)
                yield fam


class MeasuredStore:
    """A store that times its committed writes; everything else passes through unchanged."""

    TIMED = ("persist_publish", "persist_many", "save_session", "delete_session", "save_conversation", "append_message",
             "save_ticket", "save_contact", "audit", "save_key", "save_tx_next", "set_key_state")

    def __init__(self, store, histogram: Histogram) -> None:
        object.__setattr__(self, "_store", store)
        for name in self.TIMED:
            fn = getattr(store, name, None)
            if fn is not None:
                object.__setattr__(self, name, _timed(fn, histogram.labels(name)))

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._store, name, value)

    @property
    def wrapped(self):
        return self._store


def _timed(fn, child):
    perf = time.perf_counter
    observe = child.observe

    async def timed(*args, **kw):
        t0 = perf()
        out = await fn(*args, **kw)
        observe(perf() - t0)
        return out

    timed.__name__ = getattr(fn, "__name__", "timed")
    return timed
