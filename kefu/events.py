"""Events: what the pure core says happened. The desk publishes them on topics,
hands the public ones to webhooks, and runs plugin hooks on them.

An event is a type name and a JSON-able dict; the dict always carries the ids a
receiver needs to act without another lookup (conversation id, customer, team,
assignee). Event types form a closed set so a typo is an error, not a silent drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Public events: published on topics AND deliverable to webhooks.
CONVERSATION_CREATED = "conversation_created"
CONVERSATION_STATUS_CHANGED = "conversation_status_changed"
CONVERSATION_ASSIGNED = "conversation_assigned"
MESSAGE_CREATED = "message_created"
TICKET_CREATED = "ticket_created"
TICKET_UPDATED = "ticket_updated"
SLA_BREACHED = "sla_breached"

WEBHOOK_EVENTS: tuple[str, ...] = (
    CONVERSATION_CREATED,
    CONVERSATION_STATUS_CHANGED,
    CONVERSATION_ASSIGNED,
    MESSAGE_CREATED,
    TICKET_CREATED,
    TICKET_UPDATED,
    SLA_BREACHED,
)

# Topic-only events (high-rate or ephemeral; not sent to webhooks).
ASSIGNMENT_ACCEPTED = "assignment_accepted"
QUEUE_POSITION = "queue_position"
TYPING = "typing"
READ = "read"
CSAT_REQUESTED = "csat_requested"
CSAT_RECEIVED = "csat_received"
LABELS_CHANGED = "labels_changed"
AGENT_STATUS_CHANGED = "agent_status_changed"
CONTACT_UPDATED = "contact_updated"

EVENT_TYPES: frozenset[str] = frozenset(
    WEBHOOK_EVENTS
    + (
        ASSIGNMENT_ACCEPTED,
        QUEUE_POSITION,
        TYPING,
        READ,
        CSAT_REQUESTED,
        CSAT_RECEIVED,
        LABELS_CHANGED,
        AGENT_STATUS_CHANGED,
        CONTACT_UPDATED,
    )
)


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")

    def to_json(self) -> dict[str, Any]:
        return {"event": self.type, "at": self.at, "data": self.data}
