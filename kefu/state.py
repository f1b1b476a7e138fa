"""Where the desk's state lives: the ``DeskStore`` interface and its in-memory implementation.

Records (conversations, agents, tickets, contacts) are frozen values with a
``version``. Every write goes through ``commit(records, token=...)``, which is atomic
and compare-and-set: each record's ``version`` must equal the stored one (0 for a
new record), or the whole commit fails with ``Conflict`` and nothing changes. The
desk then reloads, re-decides and retries. Because an assignment writes both the
conversation and the agent (its round-robin stamp), two writers can never hand one
conversation to two agents, nor push one agent past its capacity.

Fencing: duties that must have one owner across nodes (the assignment pass, timers)
run under a lease; ``acquire_lease`` hands out a token that grows with every change
of holder, and a commit carrying a token lower than the newest one issued fails with
``StaleToken`` -- a node that paused past its lease cannot write stale decisions.

Queues and agent loads are *indexes* the store maintains on commit (waiting
conversations by team, open conversations by agent), never separately written.
Each team's queue is kept in ``Conversation.queue_key`` order as it changes (a sorted
list updated by binary search), so reading a queue never sorts it and a queue
position is a binary search -- a desk with thousands waiting must not pay
O(n log n) for every message from a waiting customer.

A Redis implementation maps this directly: records as JSON strings with a version
field, ``commit`` as one Lua script (check the lease token and every version, then
write and update the per-team sorted sets and per-agent sets), ``acquire_lease`` as
SET NX PX plus INCR of a token key. Every method is async so such a store can run
its blocking client in a worker thread.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import replace
from heapq import merge
from typing import Iterable, Protocol, Sequence, Union

from .agents import Agent
from .contacts import Contact
from .conversations import Conversation, Message, Status
from .tickets import Ticket

Record = Union[Conversation, Agent, Ticket, Contact]
KINDS: dict[type, str] = {Conversation: "conversation", Agent: "agent", Ticket: "ticket", Contact: "contact"}


class Conflict(Exception):
    """A record changed since it was read (or a new record's id is taken)."""

    def __init__(self, kind: str, key: str, expected: int, actual: int) -> None:
        super().__init__(f"{kind} {key}: expected version {expected}, store has {actual}")
        self.kind, self.key = kind, key


class StaleToken(Exception):
    """A commit carried a fencing token older than the newest lease issued."""


class DeskStore(Protocol):
    async def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> int | None: ...
    async def next_seq(self, name: str) -> int: ...
    async def commit(self, records: Sequence[Record], *, token: int | None = None) -> list[Record]: ...

    async def conversation(self, conv_id: str) -> Conversation | None: ...
    async def thread_conversation(self, customer_id: str, thread: str) -> Conversation | None: ...
    async def conversations(self, *, status: Status | None = None, customer_id: str | None = None) -> list[Conversation]: ...
    async def waiting(self, team: str | None = None) -> list[Conversation]: ...
    async def queue_position(self, conv_id: str) -> int | None: ...
    async def assigned_to(self, agent_id: str) -> list[Conversation]: ...
    async def loads(self) -> dict[str, int]: ...

    async def agent(self, agent_id: str) -> Agent | None: ...
    async def agents(self) -> list[Agent]: ...
    async def ticket(self, ticket_id: str) -> Ticket | None: ...
    async def tickets(self, *, open_only: bool = False) -> list[Ticket]: ...
    async def alarm_ticket(self, device_id: str, alarm_type: str) -> Ticket | None: ...
    async def contact(self, contact_id: str) -> Contact | None: ...
    async def contacts(self) -> list[Contact]: ...

    async def append_message(self, msg: Message) -> Message: ...
    async def messages(self, conv_id: str, *, before: int | None = None, limit: int = 50) -> list[Message]: ...


class MemoryStore:
    """``DeskStore`` in process memory: one node, fast, gone on restart."""

    def __init__(self) -> None:
        self._recs: dict[str, dict[str, Record]] = {k: {} for k in KINDS.values()}
        self._seq: dict[str, int] = {}
        self._leases: dict[str, tuple[str, float, int]] = {}
        self._token = 0  # newest fencing token issued
        self._threads: dict[tuple[str, str], str] = {}
        self._by_status: dict[Status, set[str]] = {s: set() for s in Status}
        self._waiting: dict[str, list[tuple[tuple[int, int, int], str]]] = {}  # team -> sorted (queue_key, id)
        self._assigned: dict[str, set[str]] = {}
        self._alarms: dict[tuple[str, str], str] = {}
        self._by_customer: dict[str, set[str]] = {}
        self._msgs: dict[str, list[Message]] = {}

    # --- leases and counters --------------------------------------------------------
    async def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> int | None:
        cur = self._leases.get(name)
        if cur is not None and cur[0] != holder and cur[1] > now:
            return None
        if cur is not None and cur[0] == holder and cur[1] > now:
            token = cur[2]  # renewal keeps the token
        else:
            self._token += 1
            token = self._token
        self._leases[name] = (holder, now + ttl, token)
        return token

    async def next_seq(self, name: str) -> int:
        self._seq[name] = self._seq.get(name, 0) + 1
        return self._seq[name]

    async def continue_seq(self, name: str, after: int) -> None:
        """Number ``name`` from ``after + 1`` on (ids already used by stored records)."""
        self._seq[name] = max(self._seq.get(name, 0), after)

    # --- rebuilding from the record (kefu/record.py) ---------------------------------------
    async def is_empty(self) -> bool:
        return not any(self._recs.values())

    async def restore(self, records: Iterable[Record]) -> int:
        """Put stored records back as they are, versions kept (a process starting). Returns
        how many were put back (all of them: memory starts empty)."""
        n = 0
        for r in records:
            kind = KINDS[type(r)]
            old = self._recs[kind].get(r.id)
            self._recs[kind][r.id] = r
            self._index(kind, old, r)
            n += 1
        return n

    async def message_count(self, conv_id: str) -> int:
        return len(self._msgs.get(conv_id, ()))

    async def restore_messages(self, conv_id: str, msgs: Sequence[Message]) -> bool:
        """A conversation's stored transcript, put back only while it has none here."""
        if self._msgs.get(conv_id):
            return False
        self._msgs[conv_id] = list(msgs)
        return True

    # --- the one write path ---------------------------------------------------------------
    async def commit(self, records: Sequence[Record], *, token: int | None = None) -> list[Record]:
        if token is not None and token < self._token:
            raise StaleToken(f"fencing token {token} is older than {self._token}")
        seen = set()
        for r in records:  # check everything before changing anything
            kind = KINDS[type(r)]
            if (kind, r.id) in seen:
                raise ValueError(f"{kind} {r.id} appears twice in one commit")
            seen.add((kind, r.id))
            old = self._recs[kind].get(r.id)
            have = old.version if old is not None else 0
            if have != r.version:
                raise Conflict(kind, r.id, r.version, have)
        out = []
        for r in records:
            kind = KINDS[type(r)]
            old = self._recs[kind].get(r.id)
            new = replace(r, version=r.version + 1)
            self._recs[kind][r.id] = new
            self._index(kind, old, new)
            out.append(new)
        return out

    def _index(self, kind: str, old, new) -> None:
        if kind == "conversation":
            if old is not None:
                self._by_status[old.status].discard(old.id)
                if old.status == Status.QUEUED:
                    q = self._waiting.get(old.team or "", [])
                    entry = (old.queue_key(), old.id)
                    i = bisect_left(q, entry)
                    if i < len(q) and q[i] == entry:
                        del q[i]
                if old.assignee:
                    self._assigned.get(old.assignee, set()).discard(old.id)
            self._by_status[new.status].add(new.id)
            if new.status == Status.QUEUED:
                insort(self._waiting.setdefault(new.team or "", []), (new.queue_key(), new.id))
            if new.assignee and new.status == Status.ASSIGNED:
                self._assigned.setdefault(new.assignee, set()).add(new.id)
            self._by_customer.setdefault(new.customer_id, set()).add(new.id)
            key = (new.customer_id, new.thread)
            cur = self._threads.get(key)
            if cur is None or cur == new.id or self._recs[kind][cur].created_at <= new.created_at:
                self._threads[key] = new.id
        elif kind == "ticket":
            if new.device_id and new.alarm_type:
                key = (new.device_id, new.alarm_type)
                if new.is_open:
                    self._alarms[key] = new.id
                elif self._alarms.get(key) == new.id:
                    del self._alarms[key]

    # --- reads --------------------------------------------------------------------------------
    async def conversation(self, conv_id: str) -> Conversation | None:
        return self._recs["conversation"].get(conv_id)

    async def thread_conversation(self, customer_id: str, thread: str) -> Conversation | None:
        cid = self._threads.get((customer_id, thread))
        return self._recs["conversation"][cid] if cid else None

    async def conversations(self, *, status: Status | None = None, customer_id: str | None = None) -> list[Conversation]:
        convs = self._recs["conversation"]
        if customer_id is not None:
            out = [convs[i] for i in self._by_customer.get(customer_id, ())]
            if status is not None:
                out = [c for c in out if c.status == status]
        else:
            ids: Iterable[str] = self._by_status[status] if status is not None else convs.keys()
            out = [convs[i] for i in ids]
        return sorted(out, key=lambda c: (c.created_at, c.id))

    async def waiting(self, team: str | None = None) -> list[Conversation]:
        """Waiting conversations in queue order (all teams' queues merged when ``team`` is None)."""
        convs = self._recs["conversation"]
        if team is None:
            entries = merge(*self._waiting.values()) if len(self._waiting) > 1 else \
                next(iter(self._waiting.values()), [])
        else:
            entries = self._waiting.get(team, [])
        return [convs[i] for _, i in entries]

    async def queue_position(self, conv_id: str) -> int | None:
        """1-based position of a waiting conversation within its team's queue; None if not waiting."""
        c = self._recs["conversation"].get(conv_id)
        if c is None or c.status != Status.QUEUED:
            return None
        return bisect_left(self._waiting.get(c.team or "", []), (c.queue_key(), c.id)) + 1

    async def assigned_to(self, agent_id: str) -> list[Conversation]:
        convs = self._recs["conversation"]
        return sorted((convs[i] for i in self._assigned.get(agent_id, ())), key=lambda c: (c.offered_at or 0, c.id))

    async def loads(self) -> dict[str, int]:
        return {a: len(ids) for a, ids in self._assigned.items() if ids}

    async def agent(self, agent_id: str) -> Agent | None:
        return self._recs["agent"].get(agent_id)

    async def agents(self) -> list[Agent]:
        return sorted(self._recs["agent"].values(), key=lambda a: a.id)

    async def ticket(self, ticket_id: str) -> Ticket | None:
        return self._recs["ticket"].get(ticket_id)

    async def tickets(self, *, open_only: bool = False) -> list[Ticket]:
        ts = self._recs["ticket"].values()
        return sorted((t for t in ts if t.is_open or not open_only), key=lambda t: (t.created_at, t.id))

    async def alarm_ticket(self, device_id: str, alarm_type: str) -> Ticket | None:
        tid = self._alarms.get((device_id, alarm_type))
        return self._recs["ticket"][tid] if tid else None

    async def contact(self, contact_id: str) -> Contact | None:
        return self._recs["contact"].get(contact_id)

    async def contacts(self) -> list[Contact]:
        return sorted(self._recs["contact"].values(), key=lambda c: c.id)

    # --- messages (append-only) ------------------------------------------------------------
    async def append_message(self, msg: Message) -> Message:
        lst = self._msgs.setdefault(msg.conv_id, [])
        # after the last seq, not the count: a transcript read back from the record may have
        # lost its oldest lines to retention, and a seq must never be given twice
        m = replace(msg, seq=(lst[-1].seq if lst else 0) + 1)
        lst.append(m)
        return m

    async def messages(self, conv_id: str, *, before: int | None = None, limit: int = 50) -> list[Message]:
        lst = self._msgs.get(conv_id, [])
        end = len(lst) if before is None else bisect_left(lst, before, key=lambda m: m.seq)
        return lst[max(0, end - limit): end]
