"""The conversation lifecycle as a pure state machine.

    bot ──handoff──▶ queued ──offer/pickup──▶ assigned ──resolve──▶ resolved ──window over──▶ closed
     │                 ▲  ▲                      │  │                   │
     │                 │  └──requeue (front)─────┘  └─transfer agent─┐  │ new customer message
     │                 └──transfer team──────────────────────────────┘  │ within reopen_window
     └──resolve──▶ resolved ◀───────────────────────────────────────────┘ ──▶ queued (or bot)

Every function takes a ``Conversation`` (a frozen value) and returns the new value
and the events the change produced; none of them reads a clock or touches storage.
An illegal move raises ``TransitionError`` naming the current status, so a stale
command (an agent accepting a conversation that was already requeued) fails loudly
instead of corrupting state.

Queue membership is *derived*: a conversation is waiting in team T's queue exactly
when ``status == queued and team == T``; its place is ``queue_key()``. There is no
separate queue list to fall out of step, which is what makes "never lost from a
queue" hold by construction. ``assignee`` is a single field, which makes "never
assigned twice" hold by construction; the store's compare-and-set on ``version``
keeps it so across concurrent writers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from .events import (
    ASSIGNMENT_ACCEPTED,
    CONVERSATION_ASSIGNED,
    CONVERSATION_CREATED,
    CONVERSATION_STATUS_CHANGED,
    CSAT_RECEIVED,
    CSAT_REQUESTED,
    LABELS_CHANGED,
    Event,
)

PRIORITIES: tuple[str, ...] = ("urgent", "high", "normal", "low")


def priority_rank(name: str) -> int:
    try:
        return PRIORITIES.index(name)
    except ValueError:
        raise ValueError(f"priority {name!r}: expected one of {', '.join(PRIORITIES)}") from None


class Status(str, enum.Enum):
    BOT = "bot"
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RESOLVED = "resolved"
    CLOSED = "closed"


class TransitionError(Exception):
    pass


@dataclass(frozen=True)
class Conversation:
    id: str
    customer_id: str
    thread: str
    channel: str
    status: Status
    created_at: float
    updated_at: float
    team: str | None = None
    priority: int = 2
    seq: int = 0  # FIFO order among the waiting; set each time the conversation is queued
    requeued: bool = False  # waits at the front of its priority level
    queued_at: float | None = None
    assignee: str | None = None
    offered_at: float | None = None
    accept_deadline: float | None = None  # None once accepted (or when acceptance is automatic)
    declined: frozenset[str] = frozenset()  # agents whose offer timed out: skipped for this conversation
    skills: frozenset[str] = frozenset()  # an agent needs all of these
    min_tier: int = 0  # an agent needs at least this VIP tier
    intent: str | None = None
    confidence: float | None = None
    sentiment: str | None = None
    handoff_reason: str | None = None
    labels: frozenset[str] = frozenset()
    resolved_at: float | None = None
    last_assignee: str | None = None
    bot_failures: int = 0
    bot_last_intent: str | None = None
    csat: int | None = None
    csat_comment: str | None = None
    ticket_id: str | None = None
    first_reply_at: float | None = None
    customer_read: int = 0  # read receipts: highest message seq each side has seen
    agent_read: int = 0
    version: int = 0

    @property
    def accepted(self) -> bool:
        return self.status == Status.ASSIGNED and self.accept_deadline is None

    def queue_key(self) -> tuple[int, int, int]:
        """Order among waiting conversations: priority, then requeued first, then FIFO."""
        return (self.priority, 0 if self.requeued else 1, self.seq)

    def summary(self) -> dict[str, Any]:
        """The JSON view carried by events and shown to agents (the /chat ``conversation`` shape)."""
        return {
            "id": self.id,
            "customer": self.customer_id,
            "thread": self.thread,
            "channel": self.channel,
            "status": self.status.value,
            "team": self.team,
            "priority": PRIORITIES[self.priority],
            "assignee": self.assignee,
            "accepted": self.accepted,
            "accept_deadline": self.accept_deadline,
            "intent": self.intent,
            "confidence": self.confidence,
            "sentiment": self.sentiment,
            "handoff_reason": self.handoff_reason,
            "labels": sorted(self.labels),
            "ticket_id": self.ticket_id,
            "csat": self.csat,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    # --- serialisation (for stores that keep JSON) -------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["status"] = self.status.value
        for k in ("declined", "skills", "labels"):
            d[k] = sorted(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Conversation":
        d = dict(d)
        d["status"] = Status(d["status"])
        for k in ("declined", "skills", "labels"):
            d[k] = frozenset(d.get(k) or ())
        return cls(**d)


@dataclass(frozen=True)
class Message:
    """One message in a conversation. ``private`` messages are agent notes, never sent to the customer."""

    conv_id: str
    sender: str  # "customer" | "bot" | "agent" | "system"
    text: str
    at: float
    sender_id: str | None = None
    private: bool = False
    seq: int = 0  # position in the conversation, assigned by the store
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "conv_id": self.conv_id,
            "seq": self.seq,
            "sender": self.sender,
            "sender_id": self.sender_id,
            "text": self.text,
            "private": self.private,
            "at": self.at,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Message":
        return cls(**d)


Result = tuple[Conversation, list[Event]]


def _need(conv: Conversation, *allowed: Status, action: str) -> None:
    if conv.status not in allowed:
        raise TransitionError(f"conversation {conv.id}: cannot {action} while {conv.status.value}")


def _status_event(old: Conversation, new: Conversation, now: float, reason: str, by: str | None = None) -> Event:
    return Event(
        CONVERSATION_STATUS_CHANGED,
        {
            "conversation": new.summary(),
            "from": old.status.value,
            "to": new.status.value,
            "reason": reason,
            "by": by,
            "previous_assignee": old.assignee,
            "previous_team": old.team,
        },
        now,
    )


def open_conversation(
    conv_id: str, customer_id: str, thread: str, channel: str, now: float, *, bot: bool = True
) -> Result:
    """A new conversation, with the bot (or straight to routing when ``bot`` is False: status bot
    is still the starting point, the desk hands off at once)."""
    conv = Conversation(conv_id, customer_id, thread, channel, Status.BOT, now, now)
    return conv, [Event(CONVERSATION_CREATED, {"conversation": conv.summary()}, now)]


def enqueue(
    conv: Conversation,
    *,
    team: str,
    priority: int,
    seq: int,
    now: float,
    reason: str,
    skills: frozenset[str] = frozenset(),
    min_tier: int = 0,
    by: str | None = None,
) -> Result:
    """Hand a conversation to a team's queue (bot handoff, transfer to team, reopen)."""
    _need(conv, Status.BOT, Status.ASSIGNED, Status.RESOLVED, action="queue")
    new = replace(
        conv,
        status=Status.QUEUED,
        team=team,
        priority=priority,
        seq=seq,
        requeued=False,
        queued_at=now,
        assignee=None,
        last_assignee=conv.assignee or conv.last_assignee,
        offered_at=None,
        accept_deadline=None,
        declined=frozenset(),
        skills=skills,
        min_tier=min_tier,
        handoff_reason=reason if conv.status == Status.BOT else conv.handoff_reason or reason,
        resolved_at=None,
        updated_at=now,
    )
    return new, [_status_event(conv, new, now, reason, by)]


def offer(conv: Conversation, agent: str, now: float, deadline: float | None, *, reason: str = "routed", by: str | None = None) -> Result:
    """Assign to an agent; with a deadline the agent must accept before it, else the desk requeues."""
    _need(conv, Status.QUEUED, action="assign")
    new = replace(
        conv, status=Status.ASSIGNED, assignee=agent, offered_at=now, accept_deadline=deadline, updated_at=now
    )
    evs = [
        _status_event(conv, new, now, reason, by),
        Event(CONVERSATION_ASSIGNED, {"conversation": new.summary(), "agent": agent, "reason": reason}, now),
    ]
    if deadline is None:
        evs.append(Event(ASSIGNMENT_ACCEPTED, {"conversation": new.summary(), "agent": agent}, now))
    return new, evs


def accept(conv: Conversation, agent: str, now: float) -> Result:
    _need(conv, Status.ASSIGNED, action="accept")
    if conv.assignee != agent:
        raise TransitionError(f"conversation {conv.id}: assigned to {conv.assignee}, not {agent}")
    if conv.accept_deadline is None:
        return conv, []  # already accepted: accepting twice is harmless
    new = replace(conv, accept_deadline=None, updated_at=now)
    return new, [Event(ASSIGNMENT_ACCEPTED, {"conversation": new.summary(), "agent": agent}, now)]


def requeue_front(conv: Conversation, now: float, *, reason: str, decline: bool) -> Result:
    """Back to the front of its queue (offer timed out, agent went offline). With ``decline``
    the agent is skipped for this conversation afterwards."""
    _need(conv, Status.ASSIGNED, action="requeue")
    declined = conv.declined | {conv.assignee} if decline and conv.assignee else conv.declined
    new = replace(
        conv,
        status=Status.QUEUED,
        requeued=True,
        assignee=None,
        last_assignee=conv.assignee,
        offered_at=None,
        accept_deadline=None,
        declined=declined,
        updated_at=now,
    )
    return new, [_status_event(conv, new, now, reason)]


def transfer_to_agent(conv: Conversation, agent: str, now: float, deadline: float | None, *, by: str | None) -> Result:
    """Move an assigned or waiting conversation to a named agent."""
    _need(conv, Status.QUEUED, Status.ASSIGNED, action="transfer")
    if conv.status == Status.ASSIGNED:
        if conv.assignee == agent:
            raise TransitionError(f"conversation {conv.id}: already assigned to {agent}")
        mid = replace(conv, status=Status.QUEUED, assignee=None, last_assignee=conv.assignee, accept_deadline=None)
    else:
        mid = conv
    new, evs = offer(mid, agent, now, deadline, reason="transfer", by=by)
    evs[0] = _status_event(conv, new, now, "transfer", by)
    return new, evs


def resolve(conv: Conversation, now: float, *, by: str | None, reason: str = "resolved") -> Result:
    _need(conv, Status.BOT, Status.QUEUED, Status.ASSIGNED, action="resolve")
    new = replace(
        conv,
        status=Status.RESOLVED,
        resolved_at=now,
        last_assignee=conv.assignee or conv.last_assignee,
        assignee=None,
        accept_deadline=None,
        offered_at=None,
        updated_at=now,
    )
    evs = [_status_event(conv, new, now, reason, by)]
    if conv.status == Status.ASSIGNED or conv.last_assignee:
        evs.append(Event(CSAT_REQUESTED, {"conversation": new.summary()}, now))
    return new, evs


def close(conv: Conversation, now: float, *, reason: str = "closed", by: str | None = None) -> Result:
    if conv.status == Status.CLOSED:
        return conv, []
    new = replace(conv, status=Status.CLOSED, assignee=None, accept_deadline=None, updated_at=now)
    return new, [_status_event(conv, new, now, reason, by)]


def can_reopen(conv: Conversation, now: float, window: float) -> bool:
    return conv.status == Status.RESOLVED and conv.resolved_at is not None and now - conv.resolved_at <= window


def reopen_to_bot(conv: Conversation, now: float) -> Result:
    """Reopen a conversation that never reached a human: the bot takes it again."""
    _need(conv, Status.RESOLVED, action="reopen")
    new = replace(conv, status=Status.BOT, resolved_at=None, bot_failures=0, bot_last_intent=None, updated_at=now)
    return new, [_status_event(conv, new, now, "reopened")]


def record_bot_turn(conv: Conversation, intent: str | None, failed: bool, now: float) -> Conversation:
    return replace(
        conv,
        bot_last_intent=intent,
        bot_failures=conv.bot_failures + (1 if failed else 0),
        updated_at=now,
    )


def set_labels(conv: Conversation, labels: frozenset[str], now: float, by: str | None) -> Result:
    if labels == conv.labels:
        return conv, []
    new = replace(conv, labels=labels, updated_at=now)
    return new, [Event(LABELS_CHANGED, {"conversation": new.summary(), "by": by}, now)]


def rate(conv: Conversation, rating: int, comment: str | None, now: float) -> Result:
    """Customer satisfaction, 1-5, accepted once the conversation is resolved (or closed)."""
    if conv.status not in (Status.RESOLVED, Status.CLOSED):
        raise TransitionError(f"conversation {conv.id}: rating is taken after it is resolved")
    if not (isinstance(rating, int) and 1 <= rating <= 5):
        raise ValueError("rating: expected an integer 1-5")
    new = replace(conv, csat=rating, csat_comment=comment, updated_at=now)
    return new, [Event(CSAT_RECEIVED, {"conversation": new.summary(), "rating": rating, "comment": comment, "agent": conv.last_assignee}, now)]
