"""Threshold alerts on the stored series, sent as signed webhooks.

Each ``[[alerts]]`` rule watches one series of ``kefu.timeseries.SERIES`` (optionally
only some label values). The sampler hands every new sample to ``Alerts.observe``; per
(rule, label set) a tiny state machine runs, like Prometheus' ``for``:

    ok --condition true--> pending --held for_seconds--> firing --condition false--> ok
                              \\--condition false--> ok          (resolved sent)

A label set missing from a sample (a queue that emptied and a rate that fell to zero
both count) makes the condition false. "firing" and "resolved" are POSTed to the rule's
webhook, signed exactly like the desk's webhooks (``kefu.webhooks.sign``: HMAC-SHA256
over "<timestamp>." + body in ``X-Kefu-Signature``), so one receiver can verify both.
Sending happens on a task of its own behind a bounded queue, with retries on 408/429/
5xx/network errors, so a slow receiver never delays sampling; when the queue is full
the oldest notification is dropped and counted.
"""

from __future__ import annotations

import json
import logging
import operator
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from . import httpc
from .timeseries import SERIES_BY_NAME, parse_labels
from .webhooks import post_signed, retryable

log = logging.getLogger("kefu.alerts")

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}
QUEUE_MAX = 256
MAX_ATTEMPTS = 4
BACKOFF = 1.0
TIMEOUT = 10.0


def rule_problems(rules: list) -> list[str]:
    """Config problems of [[alerts]] entries, each naming its key path."""
    problems = []
    for i, r in enumerate(rules):
        where = f"alerts[{i}]"
        if r.metric not in SERIES_BY_NAME:
            problems.append(f"{where}.metric: unknown series {r.metric!r}; the stored series are: "
                            + ", ".join(sorted(SERIES_BY_NAME)))
        if r.op not in OPS:
            problems.append(f"{where}.op: expected one of {', '.join(OPS)}")
        if not r.webhook:
            problems.append(f"{where}.webhook: required (the URL the alert is POSTed to)")
        else:
            try:
                httpc.split_url(r.webhook)
            except httpc.HttpError as e:
                problems.append(f"{where}.webhook: {e}")
        if not r.secret:
            problems.append(f"{where}.secret: required (it signs every delivery)")
        for k, v in (r.labels or {}).items():
            if not isinstance(v, str):
                problems.append(f"{where}.labels.{k}: expected a string")
    return problems


@dataclass
class _State:
    pending_since: float | None = None
    firing_since: float | None = None
    last_sent: float = 0.0
    value: float | None = None


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0


@dataclass
class Alerts:
    rules: list
    node: str = "kefu"
    clock: Any = time.time  # wall clock for X-Kefu-Timestamp
    backoff: float = BACKOFF  # seconds before the first retry, doubled each retry
    timeout: float = TIMEOUT
    states: dict[tuple[int, str], _State] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        problems = rule_problems(self.rules)
        if problems:
            raise ValueError("\n".join(problems))
        self._q: deque = deque()
        self._wake = trio.Event()

    def name_of(self, i: int) -> str:
        r = self.rules[i]
        return r.name or f"{r.metric} {r.op} {r.value:g}"

    # ------------------------------------------------------------------ evaluation

    def observe(self, at: float, values: dict[str, dict[str, float]]) -> None:
        """One sample of every series (``Sampler`` listener)."""
        for i, r in enumerate(self.rules):
            want = r.labels or {}
            seen = set()
            for labels, v in values.get(r.metric, {}).items():
                d = parse_labels(labels)
                if any(d.get(k) != val for k, val in want.items()):
                    continue
                seen.add(labels)
                self._step(i, labels, at, OPS[r.op](v, r.value), v)
            for (ri, labels), st in list(self.states.items()):
                if ri == i and labels not in seen:
                    self._step(i, labels, at, False, None)

    def _step(self, i: int, labels: str, at: float, holds: bool, value: float | None) -> None:
        key = (i, labels)
        st = self.states.get(key)
        r = self.rules[i]
        if not holds:
            if st is not None:
                if st.firing_since is not None:
                    self._send(i, labels, "resolved", at, value, st)
                del self.states[key]
            return
        if st is None:
            st = self.states[key] = _State(pending_since=at)
        st.value = value
        if st.firing_since is None:
            if at - st.pending_since >= r.for_seconds:
                st.firing_since = at
                self._send(i, labels, "firing", at, value, st)
        elif r.repeat_seconds > 0 and at - st.last_sent >= r.repeat_seconds:
            self._send(i, labels, "firing", at, value, st)

    def firing(self) -> list[dict[str, Any]]:
        """Alerts firing now (for `kefu status` and the dashboard)."""
        out = []
        for (i, labels), st in sorted(self.states.items()):
            if st.firing_since is not None:
                r = self.rules[i]
                out.append({"alert": self.name_of(i), "metric": r.metric, "labels": parse_labels(labels),
                            "op": r.op, "threshold": r.value, "value": st.value, "since": st.firing_since})
        return out

    def _send(self, i: int, labels: str, state: str, at: float, value: float | None, st: _State) -> None:
        r = self.rules[i]
        st.last_sent = at
        body = {
            "id": uuid.uuid4().hex,
            "event": f"alert_{state}",
            "at": at,
            "data": {
                "alert": self.name_of(i), "state": state, "metric": r.metric, "labels": parse_labels(labels),
                "op": r.op, "threshold": r.value, "value": value, "for_seconds": r.for_seconds,
                "since": st.firing_since if state == "firing" else st.pending_since, "node": self.node,
            },
        }
        (log.warning if state == "firing" else log.info)(
            "alert %s %s: %s%s = %s (threshold %s %g)", self.name_of(i), state, r.metric,
            f"{{{labels}}}" if labels else "", value, r.op, r.value)
        if len(self._q) >= QUEUE_MAX:
            self._q.popleft()
            self.stats.dropped += 1
        self._q.append((r, body))
        self._wake.set()

    # ------------------------------------------------------------------ delivery

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started(self)
        while True:
            if not self._q:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            rule, body = self._q.popleft()
            await self._deliver(rule, body)

    async def _deliver(self, rule, body: dict) -> bool:
        data = json.dumps(body, separators=(",", ":"), default=str).encode()
        why = ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            status, why = await post_signed(
                rule.webhook, rule.secret, body["event"], body["id"], data, ts=int(self.clock()), timeout=self.timeout
            )
            if 200 <= status < 300:
                self.stats.sent += 1
                return True
            if status and not retryable(status):
                break
            if attempt < MAX_ATTEMPTS:
                self.stats.retries += 1
                await trio.sleep(self.backoff * 2 ** (attempt - 1))
        self.stats.failed += 1
        log.warning("alert webhook %s: giving up on %s: %s", rule.webhook, body["event"], why)
        return False
