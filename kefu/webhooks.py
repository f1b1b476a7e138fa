"""Webhooks: signed HTTP POSTs of desk events, retried, never in the desk's way.

Delivery format (one event per request)::

    POST <url>
    Content-Type: application/json
    X-Kefu-Event: conversation_assigned
    X-Kefu-Delivery: 3f0c...        (same on every retry of this event: use it to deduplicate)
    X-Kefu-Timestamp: 1764288000    (Unix seconds of this attempt)
    X-Kefu-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

    {"id": "3f0c...", "event": "conversation_assigned", "at": 1764287999.2, "data": {...}}

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares
in constant time, and rejects timestamps far from its clock (replay); ``verify`` here
does exactly that.

Why a queue per endpoint: the desk must never wait for a receiver. ``submit`` only
appends to a bounded deque per endpoint (dropping, and counting, the oldest when it is
full) and wakes that endpoint's worker task, which posts events in order. A 2xx is
success; 408, 429, 5xx and network errors are retried after ``backoff * 2**n``
seconds (capped at ``backoff_max``) up to ``max_attempts``; other 4xx answers are
final (the receiver rejected the event; retrying cannot help).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import trio

from . import httpc
from .events import WEBHOOK_EVENTS, Event

log = logging.getLogger("kefu.webhooks")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def post_signed(
    url: str, secret: str, event: str, delivery: str, body: bytes, *, ts: int, timeout: float
) -> tuple[int, str]:
    """One signed POST attempt (also alert webhooks'): (HTTP status, why); status 0 when no response came."""
    headers = [
        ("Content-Type", "application/json"),
        ("X-Kefu-Event", event),
        ("X-Kefu-Delivery", delivery),
        ("X-Kefu-Timestamp", str(ts)),
        ("X-Kefu-Signature", sign(secret, ts, body)),
    ]
    try:
        resp = await httpc.request("POST", url, headers=headers, body=body, timeout=timeout)
    except httpc.HttpError as e:
        return 0, str(e)
    return resp.status, f"HTTP {resp.status}"


def retryable(status: int) -> bool:
    """A status worth another attempt: timeout, rate limit or a server error."""
    return status in (408, 429) or status >= 500


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: constant-time compare, and refuse stale or future timestamps."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    secret: str
    events: frozenset[str] = frozenset(WEBHOOK_EVENTS)

    def __post_init__(self) -> None:
        httpc.split_url(self.url)
        if not self.secret:
            raise ValueError(f"webhook {self.id}: secret is required (it signs every delivery)")
        bad = set(self.events) - set(WEBHOOK_EVENTS)
        if bad:
            raise ValueError(
                f"webhook {self.id}: unknown event(s) {', '.join(sorted(bad))}; known: {', '.join(WEBHOOK_EVENTS)}"
            )

    def view(self) -> dict:
        return {"id": self.id, "url": self.url, "events": sorted(self.events)}


@dataclass(frozen=True)
class Policy:
    queue_size: int = 1000
    max_attempts: int = 6
    backoff: float = 1.0
    backoff_max: float = 300.0
    timeout: float = 10.0


@dataclass
class Stats:
    delivered: int = 0
    failed: int = 0  # gave up after max_attempts or a final 4xx
    dropped: int = 0  # queue full: oldest discarded
    retries: int = 0


@dataclass
class _Lane:
    ep: Endpoint
    q: deque = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    cancel: trio.CancelScope | None = None
    stats: Stats = field(default_factory=Stats)


class Dispatcher:
    def __init__(
        self,
        endpoints: list[Endpoint] = (),
        policy: Policy = Policy(),
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.wall_clock = wall_clock
        self._lanes: dict[str, _Lane] = {}
        self._nursery: trio.Nursery | None = None
        # kefu.record.WebhookJournal: deliveries waiting (first try or a retry) kept in the
        # desk's record, so a restart sends them again (``requeue``)
        self.journal = None
        for ep in endpoints:
            self.add(ep)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [lane.ep for lane in self._lanes.values()]

    def stats(self, endpoint_id: str) -> Stats:
        return self._lanes[endpoint_id].stats

    def add(self, ep: Endpoint) -> None:
        if ep.id in self._lanes:
            raise ValueError(f"webhook {ep.id}: id already in use")
        lane = _Lane(ep, deque(maxlen=self.policy.queue_size))
        self._lanes[ep.id] = lane
        if self._nursery is not None:
            self._nursery.start_soon(self._worker, lane)

    def remove(self, endpoint_id: str) -> None:
        lane = self._lanes.pop(endpoint_id, None)
        if lane is None:
            raise KeyError(endpoint_id)
        if lane.cancel is not None:
            lane.cancel.cancel()

    def submit(self, event: Event) -> None:
        """Queue ``event`` for every endpoint that wants it. Never blocks, never raises."""
        if event.type not in WEBHOOK_EVENTS or not self._lanes:
            return
        body = None
        for lane in self._lanes.values():
            if event.type not in lane.ep.events:
                continue
            if body is None:
                delivery = uuid.uuid4().hex
                body = json.dumps(
                    {"id": delivery, "event": event.type, "at": event.at, "data": event.data},
                    separators=(",", ":"), default=str,
                ).encode("utf-8")
            if len(lane.q) == lane.q.maxlen:
                self._journal("finished", lane.ep.id, lane.q[0][0])
                lane.stats.dropped += 1
                n = lane.stats.dropped
                if n & (n - 1) == 0:  # 1, 2, 4, 8...: visible without flooding the log
                    log.warning("webhook %s: queue full, dropped %d events so far (oldest first)", lane.ep.id, n)
            lane.q.append((delivery, event.type, body))
            self._journal("pending", lane.ep.id, delivery, event.type, body)
            lane.wake.set()

    def _journal(self, what: str, *args) -> None:
        if self.journal is None:
            return
        try:
            getattr(self.journal, what)(*args)
        except Exception as e:  # noqa: BLE001 - delivery goes on; only its survival of a restart is at stake
            log.error("webhook journal: %s %s failed: %s", what, args[:2], e)

    def requeue(self, endpoint_id: str, delivery: str, etype: str, body: bytes) -> bool:
        """A delivery kept from before a restart: queued again (same delivery id). False when
        its endpoint is gone."""
        lane = self._lanes.get(endpoint_id)
        if lane is None:
            return False
        lane.q.append((delivery, etype, body))
        lane.wake.set()
        return True

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as n:
            self._nursery = n
            for lane in self._lanes.values():
                n.start_soon(self._worker, lane)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _worker(self, lane: _Lane) -> None:
        with trio.CancelScope() as cs:
            lane.cancel = cs
            while True:
                if not lane.q:
                    lane.wake = trio.Event()
                    await lane.wake.wait()
                    continue
                delivery, etype, body = lane.q.popleft()
                await self._deliver(lane, delivery, etype, body)

    async def _deliver(self, lane: _Lane, delivery: str, etype: str, body: bytes) -> None:
        p = self.policy
        for attempt in range(1, p.max_attempts + 1):
            status, why = await post_signed(
                lane.ep.url, lane.ep.secret, etype, delivery, body, ts=int(self.wall_clock()), timeout=p.timeout
            )
            if 200 <= status < 300:
                lane.stats.delivered += 1
                self._journal("finished", lane.ep.id, delivery)
                return
            if status and not retryable(status):
                break
            if attempt < p.max_attempts:
                lane.stats.retries += 1
                delay = min(p.backoff * 2 ** (attempt - 1), p.backoff_max)
                log.info("webhook %s: %s for %s (attempt %d); retrying in %gs", lane.ep.id, why, etype, attempt, delay)
                await trio.sleep(delay)
        lane.stats.failed += 1
        self._journal("finished", lane.ep.id, delivery)
        log.warning("webhook %s: giving up on %s %s: %s", lane.ep.id, etype, delivery, why)
