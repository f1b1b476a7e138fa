"""Tickets, SLA timers and device alarms. Pure.

A ticket tracks work that outlives a chat: opened when a conversation reaches a human
(``[desk] ticket_on_handoff``) or when a device raises an alarm. Each ticket gets two
SLA deadlines from ``[sla]`` by priority -- first response and resolution -- and a
breach event the first time a deadline passes unmet (once per kind, never repeated).

Device alarms: the payload is JSON; ``[alarms]`` names the fields (dotted paths) for
device id, alarm type, severity, state and message. One open ticket exists per
(device id, alarm type): a repeat adds a comment (and raises the priority if the
severity got worse), a recovery state closes it. Severity maps to ticket priority.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from . import edge
from .conversations import PRIORITIES
from .events import SLA_BREACHED, TICKET_CREATED, TICKET_UPDATED, Event
from .topics import valid_id

FIRST_RESPONSE = "first_response"
RESOLUTION = "resolution"


class TicketStatus(str, enum.Enum):
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


@dataclass(frozen=True)
class Ticket:
    id: str
    title: str
    status: TicketStatus
    priority: int
    created_at: float
    updated_at: float
    source: str  # "conversation" | "alarm" | "agent"
    conv_id: str | None = None
    customer_id: str | None = None
    team: str | None = None
    assignee: str | None = None
    device_id: str | None = None
    alarm_type: str | None = None
    severity: str | None = None
    repeats: int = 0
    first_response_due: float | None = None
    resolution_due: float | None = None
    first_response_at: float | None = None
    resolved_at: float | None = None
    breached: frozenset[str] = frozenset()
    comments: tuple[dict, ...] = ()
    version: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in (TicketStatus.OPEN, TicketStatus.PENDING)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "priority": PRIORITIES[self.priority],
            "source": self.source,
            "conv_id": self.conv_id,
            "customer_id": self.customer_id,
            "team": self.team,
            "assignee": self.assignee,
            "device_id": self.device_id,
            "alarm_type": self.alarm_type,
            "severity": self.severity,
            "repeats": self.repeats,
            "first_response_due": self.first_response_due,
            "resolution_due": self.resolution_due,
            "breached": sorted(self.breached),
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["status"] = self.status.value
        d["breached"] = sorted(self.breached)
        d["comments"] = list(self.comments)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Ticket":
        d = dict(d)
        d["status"] = TicketStatus(d["status"])
        d["breached"] = frozenset(d.get("breached") or ())
        d["comments"] = tuple(d.get("comments") or ())
        return cls(**d)


@dataclass(frozen=True)
class SlaTargets:
    """Seconds per priority rank (0 = urgent ... 3 = low); 0 means no target."""

    first_response: tuple[float, float, float, float] = (0, 0, 0, 0)
    resolution: tuple[float, float, float, float] = (0, 0, 0, 0)


TResult = tuple[Ticket, list[Event]]


def _dues(priority: int, created: float, sla: SlaTargets) -> tuple[float | None, float | None]:
    fr, rs = sla.first_response[priority], sla.resolution[priority]
    return (created + fr if fr > 0 else None, created + rs if rs > 0 else None)


def open_ticket(
    ticket_id: str,
    title: str,
    *,
    source: str,
    priority: int,
    now: float,
    sla: SlaTargets,
    **fields: Any,
) -> TResult:
    fr, rs = _dues(priority, now, sla)
    t = Ticket(
        ticket_id, title, TicketStatus.OPEN, priority, now, now, source,
        first_response_due=fr, resolution_due=rs, **fields,
    )
    return t, [Event(TICKET_CREATED, {"ticket": t.summary()}, now)]


def update(t: Ticket, now: float, *, change: str, comment: dict | None = None, **fields: Any) -> TResult:
    new = replace(t, updated_at=now, **fields)
    if comment is not None:
        new = replace(new, comments=new.comments + (comment,))
    return new, [Event(TICKET_UPDATED, {"ticket": new.summary(), "change": change}, now)]


def responded(t: Ticket, now: float, by: str) -> TResult:
    """The first human response stops the first-response clock."""
    if t.first_response_at is not None:
        return t, []
    return update(t, now, change="first_response", first_response_at=now, assignee=t.assignee or by)


def reprioritise(t: Ticket, priority: int, now: float, sla: SlaTargets) -> TResult:
    """New priority -> new deadlines counted from creation (a breach already recorded stays)."""
    if priority == t.priority:
        return t, []
    fr, rs = _dues(priority, t.created_at, sla)
    return update(t, now, change="priority", priority=priority, first_response_due=fr, resolution_due=rs)


def resolve_ticket(t: Ticket, now: float, *, by: str | None, note: str | None = None) -> TResult:
    if not t.is_open:
        return t, []
    comment = {"at": now, "author": by or "system", "text": note} if note else None
    return update(t, now, change="resolved", comment=comment, status=TicketStatus.RESOLVED, resolved_at=now)


def due_breaches(t: Ticket, now: float) -> list[str]:
    """SLA kinds whose deadline has passed unmet and that were not reported yet."""
    out = []
    if t.first_response_due is not None and FIRST_RESPONSE not in t.breached:
        if t.first_response_at is None and t.is_open and now >= t.first_response_due:
            out.append(FIRST_RESPONSE)
    if t.resolution_due is not None and RESOLUTION not in t.breached:
        if t.is_open and now >= t.resolution_due:
            out.append(RESOLUTION)
    return out


def breach(t: Ticket, kinds: list[str], now: float) -> TResult:
    if not kinds:
        return t, []
    new = replace(t, breached=t.breached | frozenset(kinds), updated_at=now)
    evs = [
        Event(
            SLA_BREACHED,
            {
                "ticket": new.summary(),
                "sla": k,
                "due": t.first_response_due if k == FIRST_RESPONSE else t.resolution_due,
            },
            now,
        )
        for k in kinds
    ]
    return new, evs


def next_deadline(t: Ticket) -> float | None:
    """When this ticket's SLA must next be checked, or None."""
    cands = []
    if t.is_open and t.first_response_at is None and t.first_response_due is not None and FIRST_RESPONSE not in t.breached:
        cands.append(t.first_response_due)
    if t.is_open and t.resolution_due is not None and RESOLUTION not in t.breached:
        cands.append(t.resolution_due)
    return min(cands) if cands else None


# --- device alarms ------------------------------------------------------------------------


class AlarmError(ValueError):
    pass


@dataclass(frozen=True)
class AlarmMapping:
    device_field: str = ""  # empty: the device id comes from the topic
    type_field: str = "type"
    severity_field: str = "severity"
    state_field: str = "state"
    message_field: str = "message"
    recovered_values: frozenset[str] = frozenset({"ok", "recovered", "cleared", "resolved"})
    severity_priority: Mapping[str, int] = field(
        default_factory=lambda: {"critical": 0, "major": 1, "minor": 2, "warning": 3}
    )
    default_priority: int = 2


@dataclass(frozen=True)
class Alarm:
    device_id: str
    type: str
    severity: str
    recovered: bool
    message: str
    priority: int


def _path(doc: Any, dotted: str) -> Any:
    cur = doc
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def parse_alarm(payload: bytes, mapping: AlarmMapping, *, topic_device: str | None) -> Alarm:
    """Decode an alarm message; AlarmError says which field is missing or wrong."""
    try:
        doc = edge.loads_lenient(payload, max_bytes=len(payload))  # lone surrogates -> U+FFFD
    except (ValueError, UnicodeDecodeError) as e:
        raise AlarmError(f"alarm payload is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise AlarmError("alarm payload: expected a JSON object")
    device = _path(doc, mapping.device_field) if mapping.device_field else topic_device
    if not isinstance(device, str) or not valid_id(device):
        where = f"field {mapping.device_field!r}" if mapping.device_field else "topic"
        raise AlarmError(f"alarm device id ({where}): missing or not a valid id")
    atype = _path(doc, mapping.type_field)
    if not isinstance(atype, str) or not valid_id(atype):
        raise AlarmError(f"alarm field {mapping.type_field!r}: missing or not a valid id (A-Z a-z 0-9 _ . @ : -)")
    sev = _path(doc, mapping.severity_field)
    sev = str(sev).lower() if sev is not None else ""
    state = _path(doc, mapping.state_field)
    recovered = state is not None and str(state).lower() in mapping.recovered_values
    msg = _path(doc, mapping.message_field)
    prio = mapping.severity_priority.get(sev, mapping.default_priority)
    return Alarm(device, atype, sev, recovered, str(msg) if msg is not None else "", prio)


@dataclass(frozen=True)
class AlarmDecision:
    action: str  # "open" | "repeat" | "recover" | "ignore"
    priority: int = 2


def decide_alarm(existing: Ticket | None, alarm: Alarm) -> AlarmDecision:
    """What an alarm does given the open ticket for its (device, type), if any."""
    if alarm.recovered:
        return AlarmDecision("recover" if existing is not None and existing.is_open else "ignore")
    if existing is None or not existing.is_open:
        return AlarmDecision("open", alarm.priority)
    return AlarmDecision("repeat", min(existing.priority, alarm.priority))


def alarm_title(alarm: Alarm) -> str:
    head = f"{alarm.type} on {alarm.device_id}"
    if alarm.severity:
        head += f" ({alarm.severity})"
    return f"{head}: {alarm.message}" if alarm.message else head
