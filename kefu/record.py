"""The desk's system of record: every decision in the SQL store before it is acknowledged.

The live state (``kefu.state``: memory, or Redis shared by several nodes) answers the
desk's questions in microseconds; the SQL store (``kefu.storage``: SQLite or PostgreSQL,
SM4 at rest) is the record it is rebuilt from. ``DurableStore`` wraps the live state:

* every record the desk commits (conversation, ticket, contact, agent) and every message
  it appends is queued to the SQL writer *in the order the desk made them*, without
  waiting, as one write per desk commit (the whole record and its version: the SQL row
  never goes back to an older version, whichever node writes last);
* ``unit()`` marks one customer or agent action: when the block ends it waits until the
  last write queued inside it has committed -- the writer commits in queue order, so
  that one wait covers every write of the action, and the writer's group commit makes
  concurrent actions share one fsync. The desk acknowledges (PUBACK, the /chat ack, an
  HTTP 2xx) only after ``unit()`` returned: *acknowledged means committed*. Events
  are published to agents and customers at once, as the broker routes a message before
  its commit; a crash can lose what was shown but never what was acknowledged;
* a conversation's transcript is read back from SQL the first time it is touched in a
  process that does not hold it (``_hydrate``), so a restart needs only the records.

``restore(store, now)`` rebuilds the live state at start, before anything is accepted:
conversations (queues in their stored order: the queue key is part of the record),
tickets (SLA timers resume from their stored deadlines), contacts and agents; offers
that were never accepted go back to the front of their queue (offered again once an
agent is online), agents are offline until they connect again; id counters continue
after the highest stored ids (``cv-N``, ``tk-N``, queue order) on every backend, so no
id is ever handed out twice. On Redis, only the first node to find the shared state
empty rebuilds it; every start raises the counters.
"""

from __future__ import annotations

import json
import logging
import re
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Sequence

from .agents import Agent, AgentStatus
from .contacts import Contact
from .conversations import Conversation, Message, Status
from .state import DeskStore, Record
from .storage.base import ChatMessage, StorageUnavailable
from .tickets import Ticket

log = logging.getLogger("kefu.record")

_UNIT: ContextVar[list | None] = ContextVar("kefu_desk_unit", default=None)
_NUMBERED = re.compile(r"^(cv|tk)-(\d+)$")


def in_unit() -> bool:
    """Inside an action whose writes someone waits for (``DurableStore.unit``)?"""
    return _UNIT.get() is not None


def leave_unit() -> None:
    """The calling task's writes belong to no enclosing action: a background task started
    inside one (trio copies the starter's context) must not make that action's
    acknowledgement wait for its own writes."""
    _UNIT.set(None)


class DurableStore:
    """A ``DeskStore`` whose writes are also the SQL record's (see the module doc)."""

    def __init__(self, live: DeskStore, sql: Any, *, ack_after_commit: bool = True) -> None:
        self.live = live
        self.sql = sql
        # False (``storage.ack_after_commit = false``): actions return before their writes are
        # committed -- the same writes, in the same order, but a crash can lose the last ones.
        self.ack_after_commit = ack_after_commit
        self._hydrated: set[str] = set()
        self.queued = 0  # writes queued to the SQL store
        self.waits = 0  # units that waited for a commit

    def __getattr__(self, name: str):
        return getattr(self.live, name)  # every read goes to the live store

    # --- writes -------------------------------------------------------------------------
    async def _queue(self, kind: str, args) -> None:
        handle = await self.sql.queue_write(kind, args)
        self.queued += 1
        unit = _UNIT.get()
        if unit is not None:
            unit.append(handle)

    def _row(self, r: Record) -> tuple:
        sql = self.sql
        if isinstance(r, Conversation):
            return sql.desk_conversation_row(r.to_dict(), r.version)
        if isinstance(r, Ticket):
            return sql.desk_ticket_row(r.to_dict(), r.version)
        if isinstance(r, Contact):
            return sql.desk_contact_row(r.to_dict(), r.version)
        if isinstance(r, Agent):
            return sql.desk_record_row("agent", r.id, r.version, r.to_dict())
        raise TypeError(f"no SQL row for {type(r).__name__}")

    async def commit(self, records: Sequence[Record], *, token: int | None = None) -> list[Record]:
        out = await self.live.commit(records, token=token)
        for r in out:
            if isinstance(r, Conversation) and r.version == 1:
                self._hydrated.add(r.id)  # new: no stored transcript to read back
        await self._queue("desk", [self._row(r) for r in out])
        return out

    async def append_message(self, msg: Message) -> Message:
        await self._hydrate(msg.conv_id)
        m = await self.live.append_message(msg)
        await self._queue("chat", self.sql.chat_args(chat_message(m)))
        return m

    async def messages(self, conv_id: str, *, before: int | None = None, limit: int = 50) -> list[Message]:
        await self._hydrate(conv_id)
        return await self.live.messages(conv_id, before=before, limit=limit)

    async def _hydrate(self, conv_id: str) -> None:
        if conv_id in self._hydrated:
            return
        if await self.live.message_count(conv_id) == 0:
            stored = await self.sql.desk_messages(conv_id)
            if stored:
                await self.live.restore_messages(conv_id, [desk_message(m) for m in stored])
        self._hydrated.add(conv_id)

    # --- acknowledgement ----------------------------------------------------------------
    @asynccontextmanager
    async def unit(self, *, wait: bool = True):
        """One action's writes: on a normal exit, wait until all of them are committed.
        Raises StorageUnavailable (nothing may be acknowledged) when they cannot be.
        ``wait=False``: yields a ``Pending`` to wait on later instead (the caller goes on
        with its next action meanwhile; ``Pending.wait()`` before acknowledging)."""
        if _UNIT.get() is not None:  # nested: the outermost unit waits
            yield None
            return
        h = self.sql.health()
        if not h.ready and h.pending >= h.buffer_limit:
            raise StorageUnavailable(f"{h.reason}; {h.pending} writes already waiting")
        pending = Pending(self)
        token = _UNIT.set(pending.handles)
        try:
            yield pending
        finally:
            _UNIT.reset(token)
        if wait:
            await pending.wait()

    # --- other records ------------------------------------------------------------------
    async def save_record(self, kind: str, rid: str, version: int, data: dict, *, secret: bool = False) -> None:
        """Any other desk record (a webhook, a setting), committed before this returns."""
        handle = await self.sql.queue_write("desk", [self.sql.desk_record_row(kind, rid, version, data,
                                                                             secret=secret)])
        self.queued += 1
        await self.sql.wait_written(handle)

    async def write(self, kind: str, rid: str, version: int, data: dict, *, secret: bool = False) -> None:
        """Like ``save_record`` but waited for by the enclosing ``unit()`` (or not at all)."""
        await self._queue("desk", [self.sql.desk_record_row(kind, rid, version, data, secret=secret)])


class Pending:
    """The writes of one unit, to be waited for (once) before its acknowledgement."""

    __slots__ = ("store", "handles")

    def __init__(self, store: DurableStore) -> None:
        self.store = store
        self.handles: list = []

    async def wait(self) -> None:
        handles, self.handles = self.handles, []
        if not handles or not self.store.ack_after_commit:
            return
        self.store.waits += 1
        await self.store.sql.wait_written(handles[-1])  # committed in order: the last covers all
        for h in handles[:-1]:
            if getattr(h, "error", None) is not None:
                raise StorageUnavailable(f"a desk write was not stored: {h.error}")


def chat_message(m: Message) -> ChatMessage:
    return ChatMessage(conversation_id=m.conv_id, sender_kind=m.sender, body=m.text, sender_id=m.sender_id or "",
                       created_at=m.at, meta=dict(m.meta), seq=m.seq, private=m.private)


def desk_message(m: ChatMessage) -> Message:
    meta = dict(m.meta)
    seq = m.seq or int(meta.pop("seq", 0) or 0)  # rows written before 0005 kept these in meta
    private = m.private or bool(meta.pop("private", False))
    return Message(m.conversation_id, m.sender_kind, m.body, m.created_at, sender_id=m.sender_id or None,
                   private=private, seq=seq, meta=meta)


def _legacy_conversation(row) -> Conversation:
    """A conversation stored before 0005 (no record): what its columns and meta say."""
    cid, contact, channel, state, agent, priority, intent, created, updated, meta = row
    meta = json.loads(meta or "{}")
    status = Status(state) if state in Status._value2member_map_ else Status.CLOSED
    if status in (Status.QUEUED, Status.ASSIGNED) and not meta.get("team"):
        status = Status.CLOSED
    return Conversation(cid, contact or "", meta.get("thread") or "main", channel, status, float(created),
                        float(updated), team=meta.get("team"), priority=int(priority or 2),
                        assignee=agent if status == Status.ASSIGNED else None, intent=intent or None,
                        handoff_reason=meta.get("handoff_reason"), labels=frozenset(meta.get("labels") or ()),
                        csat=meta.get("csat"), ticket_id=meta.get("ticket_id"), version=1)


def _legacy_ticket(row) -> Ticket:
    tid, conv, contact, subject, status, priority, assignee, created, updated, fields = row
    d = {"id": tid, "title": subject, "status": status, "priority": int(priority), "created_at": float(created),
         "updated_at": float(updated), "conv_id": conv, "customer_id": contact, "assignee": assignee,
         "source": "conversation", "version": 1}
    for k, v in json.loads(fields or "{}").items():
        if k in Ticket.__dataclass_fields__:
            d.setdefault(k, v)
    return Ticket.from_dict(d)


async def load(sql: Any) -> dict[str, list]:
    """The stored desk as records: {"conversation": [...], "ticket": [...], "contact": [...],
    "agent": [...], and any other kind as (id, version, dict)}."""
    data = await sql.load_desk()
    out: dict[str, list] = {}
    out["conversation"] = [Conversation.from_dict({**rec, "version": v}) if rec else _legacy_conversation(row)
                           for v, rec, row in data.pop("conversation")]
    out["ticket"] = [Ticket.from_dict({**rec, "version": v}) if rec else _legacy_ticket(row)
                     for v, rec, row in data.pop("ticket")]
    contacts = []
    for v, d in data.pop("contact"):
        attrs = dict(d.get("attributes") or {})
        tier = d.get("tier", attrs.pop("tier", "")) or ""
        kind = d.get("kind", attrs.pop("kind", "person")) or "person"
        contacts.append(Contact(d["id"], d.get("name", ""), d.get("email", ""), d.get("phone", ""), tier, kind,
                                attrs, d["created_at"], d["updated_at"], max(v, 1)))
    out["contact"] = contacts
    out["agent"] = [Agent.from_dict({**d, "version": v}) for _, v, d in data.pop("agent", [])]
    out.update(data)
    return out


def _max_number(ids, prefix: str) -> int:
    best = 0
    for i in ids:
        m = _NUMBERED.match(i)
        if m and m.group(1) == prefix:
            best = max(best, int(m.group(2)))
    return best


async def restore(store: DurableStore, now: float) -> dict[str, int]:
    """Rebuild the live state from the SQL record (see the module doc). Returns counts."""
    live, sql = store.live, store.sql
    empty = await live.is_empty()
    recs = await load(sql)
    convs, tickets = recs["conversation"], recs["ticket"]
    # Counters first, on every start and every backend: an id is never handed out twice.
    await live.continue_seq("conversation", max(_max_number((c.id for c in convs), "cv"),
                                                await sql.max_numbered_id("conversations", "cv-")))
    await live.continue_seq("ticket", max(_max_number((t.id for t in tickets), "tk"),
                                          await sql.max_numbered_id("tickets", "tk-")))
    await live.continue_seq("queue", max((c.seq for c in convs), default=0))
    counts = {"conversations": 0, "tickets": 0, "contacts": 0, "agents": 0, "offers_requeued": 0}
    if not empty:
        log.debug("desk state kept by the shared live store; counters continue after the SQL record's")
        return counts
    agents = [replace(a, status=AgentStatus.OFFLINE) for a in recs["agent"]]  # connections died with the process
    counts["conversations"] = await live.restore(convs)
    counts["tickets"] = await live.restore(tickets)
    counts["contacts"] = await live.restore(recs["contact"])
    counts["agents"] = await live.restore(agents)
    # An offer nobody accepted goes back to the front of its queue, to be offered again.
    from . import conversations as C

    again = []
    for c in convs:
        if c.status == Status.ASSIGNED and c.accept_deadline is not None:
            again.append(C.requeue_front(c, now, reason="restart", decline=False)[0])
    if again:
        async with store.unit():
            await store.commit(again)
    counts["offers_requeued"] = len(again)
    if any(counts.values()):
        log.info("desk restored from the %s record: %s", sql.backend,
                 ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    return counts


class WebhookJournal:
    """Webhook deliveries not yet done (``desk_records`` kind "webhook_delivery"): written
    when an event is queued for an endpoint -- inside the action that caused it, so it is
    committed before that action is acknowledged -- and deleted once delivered or given up."""

    KIND = "webhook_delivery"

    def __init__(self, store: DurableStore) -> None:
        self.store = store

    def _write(self, row: tuple) -> None:
        handle = self.store.sql.queue_write_nowait("desk", [row])
        self.store.queued += 1
        unit = _UNIT.get()
        if unit is not None:
            unit.append(handle)

    def pending(self, endpoint: str, delivery: str, etype: str, body: bytes) -> None:
        self._write(self.store.sql.desk_record_row(
            self.KIND, f"{endpoint}:{delivery}", 1,
            {"endpoint": endpoint, "delivery": delivery, "type": etype, "body": body.decode("utf-8")}, secret=True))

    def finished(self, endpoint: str, delivery: str) -> None:
        self._write(self.store.sql.desk_record_delete_row(self.KIND, f"{endpoint}:{delivery}"))


async def restore_webhooks(desk: Any, store: DurableStore) -> int:
    """Webhooks added through the API (``desk_records`` kind "webhook"), back on the desk, and
    the deliveries that were still waiting (first try or a retry) queued again."""
    from .webhooks import Endpoint

    n = 0
    for wid, _version, d in await store.sql.desk_records("webhook"):
        if d.get("deleted") or wid in {ep.id for ep in desk.webhooks.endpoints}:
            continue
        try:
            desk.webhooks.add(Endpoint(wid, d["url"], d["secret"], frozenset(d["events"])))
            n += 1
        except (KeyError, ValueError) as e:
            log.error("stored webhook %s not restored: %s", wid, e)
    journal = WebhookJournal(store)
    again = 0
    for rid, _version, d in await store.sql.desk_records(WebhookJournal.KIND):
        if desk.webhooks.requeue(d["endpoint"], d["delivery"], d["type"], d["body"].encode("utf-8")):
            again += 1
        else:
            journal.finished(d["endpoint"], d["delivery"])
    if again:
        log.info("%d webhook deliveries queued again", again)
    desk.webhooks.journal = journal
    return n


async def visitor_secret_of(store: DurableStore) -> bytes:
    """The widget's visitor secret: made once, kept (sealed) in the record, the same after
    every restart -- so a visitor who reloads the page keeps its identity and history."""
    import secrets

    for _ in range(2):  # two nodes starting at once may both make one: the first committed stays
        for rid, _version, d in await store.sql.desk_records("setting"):
            if rid == "widget.visitor_secret":
                return bytes.fromhex(d["hex"])
        await store.save_record("setting", "widget.visitor_secret", 1, {"hex": secrets.token_bytes(32).hex()},
                                secret=True)
    raise StorageUnavailable("the widget's visitor secret could not be stored")


__all__ = ["DurableStore", "WebhookJournal", "in_unit", "restore", "load", "restore_webhooks", "visitor_secret_of", "chat_message",
           "desk_message"]
