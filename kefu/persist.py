"""Durable transcripts: the desk's records and messages written behind to kefu.storage.

The live state (``kefu.state.DeskStore``) answers the desk's questions in microseconds;
the SQL store (``kefu.storage``: SQLite or PostgreSQL, SM4 at rest, transcript search)
keeps the history. ``PersistingStore`` wraps a live store: every committed record and
every appended message is also queued for the SQL store, and ``Transcripts.run`` writes
them from lanes keyed by conversation (so one conversation's lines keep their order
while different conversations share the storage writer's group commits).

Nothing is dropped: when the queue is full the desk waits (back-pressure) rather than
lose a transcript line; a database outage therefore slows the desk down instead of
silently forgetting conversations. ``stats`` counts what was written and what failed.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import trio

from .agents import Agent
from .contacts import Contact
from .conversations import PRIORITIES, Conversation, Message, Status
from .state import DeskStore, Record
from .tickets import Ticket

log = logging.getLogger("kefu.persist")


def conversation_row(c: Conversation):
    from .storage.base import Conversation as Row

    return Row(
        id=c.id, contact_id=c.customer_id, channel=c.channel, state=c.status.value, assigned_agent=c.assignee,
        priority=c.priority, subject=c.intent or "", created_at=c.created_at, updated_at=c.updated_at,
        closed_at=c.updated_at if c.status == Status.CLOSED else None,
        meta={"thread": c.thread, "team": c.team, "labels": sorted(c.labels), "csat": c.csat,
              "ticket_id": c.ticket_id, "handoff_reason": c.handoff_reason, "priority": PRIORITIES[c.priority]},
    )


def message_row(m: Message):
    from .storage.base import ChatMessage

    return ChatMessage(conversation_id=m.conv_id, sender_kind=m.sender, body=m.text, sender_id=m.sender_id or "",
                       created_at=m.at, meta={**m.meta, "seq": m.seq, "private": m.private})


def ticket_row(t: Ticket):
    from .storage.base import Ticket as Row

    return Row(id=t.id, subject=t.title, status=t.status.value, priority=t.priority, conversation_id=t.conv_id,
               contact_id=t.customer_id, assignee=t.assignee, created_at=t.created_at, updated_at=t.updated_at,
               fields={k: v for k, v in t.to_dict().items() if k not in ("id", "title", "status", "priority",
                                                                         "conv_id", "customer_id", "assignee",
                                                                         "created_at", "updated_at", "version")})


def contact_row(c: Contact):
    from .storage.base import Contact as Row

    return Row(id=c.id, name=c.name, email=c.email, phone=c.phone,
               attributes={**c.attributes, "tier": c.tier, "kind": c.kind}, created_at=c.created_at,
               updated_at=c.updated_at)


@dataclass
class Stats:
    written: int = 0
    failed: int = 0


class Transcripts:
    """The write-behind queue to a ``kefu.storage`` CoreStore."""

    def __init__(self, sql: Any, *, lanes: int = 64, queue: int = 64_000) -> None:
        self.sql = sql
        self._lanes = [trio.open_memory_channel(queue // lanes) for _ in range(lanes)]
        self.stats = Stats()
        self._idle = trio.Event()
        self._pending = 0

    async def put(self, key: str, kind: str, row: Any) -> None:
        send, _ = self._lanes[zlib.crc32(key.encode()) % len(self._lanes)]
        self._pending += 1
        try:
            # Called under the desk lock: no scheduler round unless the lane is really full.
            send.send_nowait((kind, row))
        except trio.WouldBlock:
            try:
                await send.send((kind, row))  # back-pressure: wait rather than lose a line
            except BaseException:
                self._pending -= 1  # cancelled: never queued, so drained() must not wait for it
                raise

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as n:
            for _, recv in self._lanes:
                n.start_soon(self._lane, recv)
            task_status.started(self)

    async def _lane(self, recv) -> None:
        async for kind, row in recv:
            try:
                if kind == "message":
                    await self.sql.append_message(row)
                elif kind == "conversation":
                    await self.sql.save_conversation(row)
                elif kind == "ticket":
                    await self.sql.save_ticket(row)
                elif kind == "contact":
                    await self.sql.save_contact(row)
                self.stats.written += 1
            except Exception as e:  # noqa: BLE001 - counted and logged; the live desk goes on
                self.stats.failed += 1
                log.error("writing a %s to storage failed: %s", kind, e)
            finally:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()
                    self._idle = trio.Event()

    async def drained(self) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        while self._pending:
            await self._idle.wait()


async def continue_numbering(live, sql) -> None:
    """Make the in-memory desk continue conversation and ticket numbers after the stored ones.

    The live state starts empty on every start while the SQL store keeps history: without
    this, the first conversation after a restart would be ``cv-1`` again and its transcript
    would be filed (and found by search) together with an old conversation's."""
    live.continue_seq("conversation", await sql.max_numbered_id("conversations", "cv-"))
    live.continue_seq("ticket", await sql.max_numbered_id("tickets", "tk-"))


class PersistingStore:
    """A ``DeskStore`` that also writes what it commits to ``Transcripts``."""

    def __init__(self, live: DeskStore, transcripts: Transcripts) -> None:
        self.live = live
        self.t = transcripts

    def __getattr__(self, name: str):
        return getattr(self.live, name)  # every read goes to the live store

    async def commit(self, records: Sequence[Record], *, token: int | None = None) -> list[Record]:
        out = await self.live.commit(records, token=token)
        for r in out:
            if isinstance(r, Conversation):
                await self.t.put(r.id, "conversation", conversation_row(r))
            elif isinstance(r, Ticket):
                await self.t.put(r.conv_id or r.id, "ticket", ticket_row(r))
            elif isinstance(r, Contact):
                await self.t.put(r.id, "contact", contact_row(r))
            elif isinstance(r, Agent):
                pass  # presence is live state only
        return out

    async def append_message(self, msg: Message) -> Message:
        m = await self.live.append_message(msg)
        await self.t.put(m.conv_id, "message", message_row(m))
        return m
