"""What kefu keeps, as plain records and the Protocols every backend implements.

Three groups, one object: a ``Store`` (SQLite or PostgreSQL) is a ``BrokerStore`` (MQTT
sessions, offline queues, inflight ids, retained messages), a ``CoreStore``
(conversations, chat messages, tickets, contacts, audit log, transcript search, metrics)
and a ``KeyStore`` (wrapped SM4 keys and their counters). Redis (``storage.redis``) holds
only what several kefu nodes share at run time, and has its own small API.

Every write that returns something the caller will acknowledge to a user (a PUBACK, an
HTTP 201) *awaits the commit*: writes go through one writer thread that commits them in
groups, so waiting is cheap under load. Writes marked "no wait" are queued and committed
with the next group; losing them in a crash only causes a harmless redelivery.

Times are float seconds since the epoch. Ids of conversations, tickets and contacts are
chosen by the caller (uuid4 hex is fine); ids of messages are assigned by the store.
Nothing here imports the broker: MQTT 5 properties travel as the broker's own encoded
bytes (``properties``), which the store keeps opaque.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from .crypto import KeyRecord

__all__ = [
    "StorageError", "StorageUnavailable", "StaleFence", "SearchUnavailable",
    "StoredMessage", "SubscriptionRecord", "SessionRecord", "QueuedMessage",
    "Conversation", "ChatMessage", "Ticket", "Contact", "AuditEntry", "SearchHit",
    "MetricSample", "MetricBucket", "Health", "KeyRecord",
    "BrokerStore", "CoreStore", "KeyStore", "Store",
]


class StorageError(Exception):
    """Base of storage errors."""


class StorageUnavailable(StorageError):
    """The database cannot take writes now (disk full, locked, server gone, buffer full).

    Nothing was acknowledged for the operation that raised it. ``reason`` says why.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StaleFence(StorageError):
    """A conversation write carried a fencing token older than the one already stored:
    another node has assigned the conversation since this one took its lock."""


class SearchUnavailable(StorageError):
    """Transcript search is switched off (storage.search_index = false)."""


# --------------------------------------------------------------------------- MQTT


@dataclass(frozen=True, slots=True)
class StoredMessage:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    properties: bytes = b""  # the broker's encoded MQTT 5 properties, opaque here
    sender: str = ""  # client id of the publisher ("" for kefu itself)
    created_at: float = 0.0
    expires_at: float | None = None  # message expiry (MQTT 5), None: never
    id: int = 0  # assigned by persist_publish


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_id: int | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A persistent MQTT session (clean start false / session expiry > 0)."""

    client_id: str
    protocol_level: int = 4
    expiry_interval: int = 0  # seconds after disconnect; 0xFFFFFFFF: never
    subscriptions: tuple[SubscriptionRecord, ...] = ()
    connected: bool = True
    disconnected_at: float | None = None
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message owed to a persistent session: queued, or sent and not yet acknowledged."""

    client_id: str
    message: StoredMessage
    qos: int  # the QoS it is delivered with (min of publish and subscription)
    packet_id: int | None = None  # set once sent (inflight)
    state: str = "queued"  # "queued" | "sent" | "pubrec" (QoS 2: PUBREC received, PUBREL owed)
    seq: int = 0


# --------------------------------------------------------------------------- customer service


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    contact_id: str | None = None
    channel: str = "web"  # "web" | "mqtt" | ...
    state: str = "bot"  # bot -> queued -> assigned -> resolved -> closed (kefu.conversations owns the rules)
    assigned_agent: str | None = None
    priority: int = 0
    subject: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    closed_at: float | None = None
    meta: dict = field(default_factory=dict)
    fence: int = 0  # highest fencing token that wrote this row (storage.redis AssignmentLocks)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    conversation_id: str
    sender_kind: str  # "customer" | "agent" | "bot" | "system"
    body: str
    sender_id: str = ""
    created_at: float = 0.0
    meta: dict = field(default_factory=dict)
    id: int = 0  # assigned by append_message
    seq: int = 0  # place in its conversation (1, 2, ...), given by the desk
    private: bool = False  # an agent's note, never shown to the customer


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str
    subject: str
    status: str = "open"
    priority: int = 0
    conversation_id: str | None = None
    contact_id: str | None = None
    assignee: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Contact:
    """A customer. name, email, phone and attributes are personal data: encrypted at rest."""

    id: str
    external_id: str | None = None  # the integrator's id (must not itself be personal data)
    name: str = ""
    email: str = ""
    phone: str = ""
    attributes: dict = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    action: str
    subject: str = ""
    detail: dict = field(default_factory=dict)
    at: float = 0.0
    id: int = 0


@dataclass(frozen=True, slots=True)
class SearchHit:
    message_id: int
    conversation_id: str
    created_at: float
    sender_kind: str
    body: str
    snippet: str  # the match with some context, the match itself in [brackets]


@dataclass(frozen=True, slots=True)
class MetricSample:
    name: str
    value: float
    at: float = 0.0
    labels: str = ""  # canonical 'k=v,k2=v2'


@dataclass(frozen=True, slots=True)
class MetricBucket:
    start: float
    count: int
    avg: float
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class Health:
    """What /readyz reports. ``ready`` is False while writes cannot be committed."""

    ready: bool
    backend: str
    reason: str = ""
    since: float = 0.0  # when the current state began (time.time())
    pending: int = 0  # operations waiting for a commit (the in-memory buffer)
    buffer_limit: int = 0
    features: dict = field(default_factory=dict)  # e.g. {"timescaledb": "absent", "pg_trgm": "1.6"}


# --------------------------------------------------------------------------- interfaces


@runtime_checkable
class BrokerStore(Protocol):
    async def persist_publish(
        self,
        message: StoredMessage,
        recipients: Sequence[tuple[str, int]] = (),
        *,
        inbound: tuple[str, int] | None = None,
        replay: tuple[int, int] | None = None,
    ) -> int:
        """Store one PUBLISH and return its id, *after the commit*.

        ``recipients``: (client id, QoS) of the persistent sessions owed this message; one
        queue row each, in this same transaction. (client id, QoS, packet id, state) stores
        one already sent (state "sent" or "pubrec"). A retained message (``message.retain``)
        also replaces the topic's retained message (an empty payload clears it).
        ``inbound``: (client id, packet id) of an incoming QoS 2 PUBLISH, remembered
        until ``release_inbound`` so a redelivery after a crash is not stored twice.
        ``replay``: (device key id, counter) of an SM4 envelope, persisted as the key's
        replay high-water mark atomically with the message.
        Raises StorageUnavailable when the database cannot commit (nothing acknowledged).
        """

    async def persist_many(self, items: Sequence[tuple]) -> list[int]:
        """Several (message, recipients, inbound, replay) tuples in one commit, in order."""

    async def mark_sent(self, client_id: str, message_id: int, packet_id: int) -> None:
        """No wait. The queued message went out with ``packet_id`` (now inflight)."""

    async def mark_pubrec(self, client_id: str, packet_id: int) -> None:
        """No wait. QoS 2 outbound: PUBREC arrived; the message itself is no longer needed."""

    async def ack_delivery(self, client_id: str, packet_id: int) -> None:
        """No wait. PUBACK / PUBCOMP arrived: the delivery is complete."""

    async def release_inbound(self, client_id: str, packet_id: int) -> None:
        """No wait. PUBREL for an inbound QoS 2 message arrived."""

    async def inbound_pending(self, client_id: str) -> list[int]:
        """Packet ids of inbound QoS 2 messages stored but not released."""

    async def save_session(self, session: SessionRecord) -> None:
        """Create or replace a persistent session (awaits the commit)."""

    async def delete_session(self, client_id: str) -> None:
        """Forget a session and everything queued for it (awaits the commit)."""

    async def load_session(self, client_id: str) -> SessionRecord | None: ...

    async def load_sessions(self) -> list[SessionRecord]:
        """Every persistent session (at start, to rebuild the subscription trie)."""

    async def load_queue(self, client_id: str, limit: int = 1000) -> list[QueuedMessage]:
        """What is owed to a session, oldest first: inflight (sent/pubrec) then queued."""

    async def load_retained(self) -> list[StoredMessage]: ...

    async def expire_sessions(self, now: float) -> int:
        """Delete disconnected sessions whose expiry has passed; returns how many."""


@runtime_checkable
class CoreStore(Protocol):
    async def save_conversation(self, conv: Conversation, *, fence: int | None = None) -> None:
        """Create or replace. With ``fence`` (a fencing token from AssignmentLocks), raises
        StaleFence when a newer token already wrote this conversation."""

    async def get_conversation(self, conv_id: str) -> Conversation | None: ...

    async def list_conversations(self, *, state: str | None = None, contact_id: str | None = None,
                                 limit: int = 100) -> list[Conversation]: ...

    async def append_message(self, msg: ChatMessage) -> int:
        """Store one transcript line (body encrypted at rest when enabled) and index it."""

    async def list_messages(self, conv_id: str, *, after_id: int = 0, limit: int = 500) -> list[ChatMessage]: ...

    async def save_ticket(self, ticket: Ticket) -> None: ...

    async def get_ticket(self, ticket_id: str) -> Ticket | None: ...

    async def list_tickets(self, *, status: str | None = None, limit: int = 100) -> list[Ticket]: ...

    async def save_contact(self, contact: Contact) -> None: ...

    async def get_contact(self, contact_id: str) -> Contact | None: ...

    async def find_contact(self, external_id: str) -> Contact | None: ...

    async def audit(self, entry: AuditEntry) -> int: ...

    async def list_audit(self, *, since: float = 0.0, limit: int = 100) -> list[AuditEntry]: ...

    async def search(self, text: str, *, limit: int = 20, conversation_id: str | None = None) -> list[SearchHit]:
        """Case-insensitive substring search over transcripts (Chinese and English alike);
        whitespace separates terms that must all occur. Newest first."""

    async def record_metrics(self, samples: Sequence[MetricSample]) -> None:
        """No wait."""

    async def metric_buckets(self, name: str, start: float, end: float, bucket_s: int,
                             labels: str | None = None) -> list[MetricBucket]: ...

    async def prune(self, now: float) -> dict[str, int]:
        """Apply the retention settings; returns rows deleted per table."""


@runtime_checkable
class KeyStore(Protocol):
    async def load_keys(self) -> list[KeyRecord]: ...

    async def save_key(self, rec: KeyRecord) -> None: ...

    async def set_key_state(self, key_id: int, state: str) -> None: ...

    async def save_tx_next(self, key_id: int, tx_next: int) -> None:
        """Persist an egress counter reservation (awaits the commit)."""

    async def save_rx_high(self, key_id: int, counter: int) -> None:
        """No wait. Raise the replay high-water mark (never lowers it)."""

    async def reencrypt(self, old_key_id: int, recrypt, limit: int = 500) -> int:
        """Re-encrypt up to ``limit`` rows sealed with ``old_key_id`` using ``recrypt(blob,
        context) -> blob``; returns how many rows changed (0: none left)."""

    async def count_key_uses(self, key_id: int) -> int: ...


@runtime_checkable
class Store(BrokerStore, CoreStore, KeyStore, Protocol):
    backend: str

    def health(self) -> Health: ...

    async def migration_status(self) -> list[tuple[int, str, float | None]]:
        """(version, name, applied_at or None) for every known migration."""
