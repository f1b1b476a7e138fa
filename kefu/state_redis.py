"""``DeskStore`` on Redis: the desk's live state shared by several kefu nodes.

The mapping follows kefu/state.py, with the same semantics as ``MemoryStore``:

* records: one hash per kind, ``r:<kind>`` id -> JSON (the records' ``to_dict``), and
  ``v:<kind>`` id -> version, so the compare-and-set never parses JSON;
* ``commit`` is ONE Lua script: check the fencing token, check every version, then write
  every record and move it between the indexes. Redis runs a script alone, so two nodes
  committing at once are serialised exactly like two tasks on one ``MemoryStore``;
* indexes the script keeps: ``q:<team>`` (sorted set of waiting conversations, scored
  by ``queue_key`` packed into one exact double, ties broken by id as Redis orders equal
  scores by member -- the same order as MemoryStore's ``(queue_key, id)``), ``waiting``
  (all teams merged, same scores), ``qteam`` (waiting id -> team, for ``queue_position``),
  ``st:<status>``, ``cu:<customer>``, ``as:<agent>`` (open conversations) and ``loads``
  (agent -> count, so ``loads()`` is one HGETALL), ``th`` (customer+thread -> newest
  conversation) and ``al`` (device+alarm type -> open ticket). To move a conversation
  out of its old place the script reads a small JSON array of the old index facts
  (``x:conversation``), written next to the record -- never the record itself;
* ``acquire_lease``: a hash per lease (holder, expiry, token) and ``INCR token`` for a new
  holder, in one script. The expiry is compared with the caller's ``now`` exactly as
  MemoryStore does (the desk passes its own clock; nodes' clocks must agree well within
  the lease TTL -- and if they do not, fencing still refuses the stale writer);
* messages: one list per conversation, ``RPUSH`` returns the new length, which is the
  message's ``seq``; counters are ``INCR seq:<name>``.

The keys are built inside the scripts from the prefix, so this runs on one Redis server
(or a cluster if the prefix holds a hash tag such as ``{kefu}:desk:``, which keeps every
key on one slot). redis-py blocks, so every call runs in a worker thread through
``RedisState`` (same connection handling, limiter and StorageUnavailable mapping);
methods needing several reads do them in one script or pipeline, one round trip.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Sequence

import trio

from .agents import Agent
from .contacts import Contact
from .conversations import Conversation, Message, Status
from .state import KINDS, Conflict, Record, StaleToken
from .storage.base import StorageUnavailable
from .storage.redis import RedisState
from .tickets import Ticket

_DECODE = {"conversation": Conversation.from_dict, "agent": Agent.from_dict,
           "ticket": Ticket.from_dict, "contact": Contact.from_dict}

# ARGV[1] prefix, ARGV[2] token or '', ARGV[3] n; then per record: kind, id, version, json, index facts,
# the version written (version + 1 for a commit; the stored version when the record is restored).
# Conversation facts: [status, team, score, assignee, active assignee, customer, thread field, created_at]
# Ticket facts: [alarm field or '', '1' when open]
_COMMIT = """
local P = ARGV[1]
if ARGV[2] ~= '' then
  local newest = tonumber(redis.call('GET', P .. 'token') or '0')
  if tonumber(ARGV[2]) < newest then return {'stale', tostring(newest)} end
end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  local b = 4 + i * 6
  local have = redis.call('HGET', P .. 'v:' .. ARGV[b], ARGV[b + 1]) or '0'
  if have ~= ARGV[b + 2] then return {'conflict', ARGV[b], ARGV[b + 1], ARGV[b + 2], have} end
end
for i = 0, n - 1 do
  local b = 4 + i * 6
  local kind, id, facts = ARGV[b], ARGV[b + 1], ARGV[b + 4]
  redis.call('HSET', P .. 'r:' .. kind, id, ARGV[b + 3])
  redis.call('HSET', P .. 'v:' .. kind, id, tonumber(ARGV[b + 5]))
  if kind == 'conversation' then
    local new = cjson.decode(facts)
    local oldraw = redis.call('HGET', P .. 'x:conversation', id)
    if oldraw then
      local old = cjson.decode(oldraw)
      redis.call('SREM', P .. 'st:' .. old[1], id)
      if old[1] == 'queued' then
        redis.call('ZREM', P .. 'q:' .. old[2], id)
        redis.call('ZREM', P .. 'waiting', id)
        redis.call('HDEL', P .. 'qteam', id)
      end
      if old[4] ~= '' and redis.call('SREM', P .. 'as:' .. old[4], id) == 1 then
        if redis.call('HINCRBY', P .. 'loads', old[4], -1) <= 0 then redis.call('HDEL', P .. 'loads', old[4]) end
      end
    end
    redis.call('SADD', P .. 'st:' .. new[1], id)
    if new[1] == 'queued' then
      redis.call('ZADD', P .. 'q:' .. new[2], new[3], id)
      redis.call('ZADD', P .. 'waiting', new[3], id)
      redis.call('HSET', P .. 'qteam', id, new[2])
    end
    if new[5] ~= '' and redis.call('SADD', P .. 'as:' .. new[5], id) == 1 then
      redis.call('HINCRBY', P .. 'loads', new[5], 1)
    end
    redis.call('SADD', P .. 'cu:' .. new[6], id)
    local cur = redis.call('HGET', P .. 'th', new[7])
    local take = (not cur) or cur == id
    if not take then
      local cx = redis.call('HGET', P .. 'x:conversation', cur)
      take = (not cx) or tonumber(cjson.decode(cx)[8]) <= tonumber(new[8])
    end
    if take then redis.call('HSET', P .. 'th', new[7], id) end
    redis.call('HSET', P .. 'x:conversation', id, facts)
  elseif kind == 'ticket' then
    local t = cjson.decode(facts)
    if t[1] ~= '' then
      if t[2] == '1' then
        redis.call('HSET', P .. 'al', t[1], id)
      elseif redis.call('HGET', P .. 'al', t[1]) == id then
        redis.call('HDEL', P .. 'al', t[1])
      end
    end
  end
end
return {'ok'}
"""

# KEYS[1] lease hash, KEYS[2] token counter; ARGV[1] holder, ARGV[2] now, ARGV[3] now + ttl
_LEASE = """
local h = redis.call('HMGET', KEYS[1], 'holder', 'expires', 'token')
local live = h[1] and tonumber(h[2]) > tonumber(ARGV[2])
if live and h[1] ~= ARGV[1] then return false end
local token
if live then token = tonumber(h[3]) else token = redis.call('INCR', KEYS[2]) end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires', ARGV[3], 'token', token)
return token
"""

# KEYS[1] index (sorted set when ARGV[1] == 'z', else set), KEYS[2] record hash -> the records' JSON
_RECORDS = """
local ids
if ARGV[1] == 'z' then ids = redis.call('ZRANGE', KEYS[1], 0, -1) else ids = redis.call('SMEMBERS', KEYS[1]) end
local out = {}
for i = 1, #ids, 1000 do
  local part = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  for _, v in ipairs(part) do if v then out[#out + 1] = v end end
end
return out
"""

# KEYS[1] pointer hash, KEYS[2] record hash; ARGV[1] field -> the pointed-to record's JSON
_DEREF = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[2], id)
"""

# KEYS[1] qteam hash; ARGV[1] prefix, ARGV[2] id -> 0-based rank in its team's queue
_POSITION = """
local team = redis.call('HGET', KEYS[1], ARGV[2])
if not team then return false end
return redis.call('ZRANK', ARGV[1] .. 'q:' .. team, ARGV[2])
"""

# KEYS[1] message list; ARGV[1] before ('' for none), ARGV[2] limit -> {first seq - 1, json...}
_MESSAGES = """
local len = redis.call('LLEN', KEYS[1])
local stop = len
if ARGV[1] ~= '' then stop = math.max(0, math.min(len, tonumber(ARGV[1]) - 1)) end
local start = math.max(0, stop - tonumber(ARGV[2]))
local out = {start}
if stop > start then
  for _, v in ipairs(redis.call('LRANGE', KEYS[1], start, stop - 1)) do out[#out + 1] = v end
end
return out
"""

# KEYS[1] counter; ARGV[1] n -> the counter raised to at least n
_AT_LEAST = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

# KEYS[1] message list; ARGV: the messages' JSON -> 1 when pushed (the list was empty), else 0
_FILL = """
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
redis.call('RPUSH', KEYS[1], unpack(ARGV))
return 1
"""

_SCORE_SEQ = 1 << 48  # seq below 2**48, priority below 16: the packed score stays an exact double


def queue_score(c: Conversation) -> int:
    """``queue_key`` packed into one integer that a double holds exactly (a sorted-set score)."""
    prio, front, seq = c.queue_key()
    if not (0 <= prio < 16 and 0 <= seq < _SCORE_SEQ):
        raise ValueError(f"conversation {c.id}: priority {prio} or queue seq {seq} out of range for the Redis queue")
    return (prio * 2 + front) * _SCORE_SEQ + seq


def _dumps(d: dict) -> str:
    return json.dumps(d, separators=(",", ":"), allow_nan=False)


def to_json(r: Record) -> str:
    return _dumps(r.to_dict())


def from_json(kind: str, s: str) -> Record:
    return _DECODE[kind](json.loads(s))


def _pair(a: str, b: str) -> str:
    return _dumps([a, b])


def _facts(r: Record) -> str:
    if isinstance(r, Conversation):
        active = r.assignee if r.assignee and r.status == Status.ASSIGNED else ""
        return _dumps([r.status.value, r.team or "", str(queue_score(r)), r.assignee or "", active,
                       r.customer_id, _pair(r.customer_id, r.thread), repr(float(r.created_at))])
    if isinstance(r, Ticket):
        alarm = _pair(r.device_id, r.alarm_type) if r.device_id and r.alarm_type else ""
        return _dumps([alarm, "1" if r.is_open else "0"])
    return "[]"


class RedisDeskStore(RedisState):
    """``DeskStore`` in Redis under ``prefix``; every node of one desk uses the same prefix.

    It is a ``RedisState`` (connection, worker threads, error mapping, ``delete_all``):
    ``open()`` it before use, ``close()`` it after.
    """

    shared = True  # other nodes write here too: the desk's lease holder polls for work (Desk._shared_assign_loop)

    CACHE = 50_000  # decoded records kept (per kind), keyed by their exact JSON

    def __init__(self, url: str, *, prefix: str = "kefu:desk:", concurrency: int = 8) -> None:
        super().__init__(url, prefix=prefix, concurrency=concurrency)
        # Decoding dominates reading a long queue (about 18 us a conversation against 2.5 us
        # of Redis time); a record's JSON names one immutable value, so equal JSON can share
        # one decoded record -- as every reader of a MemoryStore shares its records.
        self._decoded: dict[str, dict[str, Record]] = {k: {} for k in _DECODE}

    def _decode(self, kind: str, s: str) -> Record:
        cache = self._decoded[kind]
        r = cache.get(s)
        if r is None:
            if len(cache) >= self.CACHE:
                cache.clear()
            r = cache[s] = from_json(kind, s)
        return r

    async def open(self) -> "RedisDeskStore":
        await super().open()
        c = self.client
        self._s_commit = c.register_script(_COMMIT)
        self._s_lease = c.register_script(_LEASE)
        self._s_records = c.register_script(_RECORDS)
        self._s_deref = c.register_script(_DEREF)
        self._s_position = c.register_script(_POSITION)
        self._s_messages = c.register_script(_MESSAGES)
        self._s_at_least = c.register_script(_AT_LEAST)
        self._s_fill = c.register_script(_FILL)
        return self

    # --- rebuilding from the record (kefu/record.py) ---------------------------------------
    async def is_empty(self) -> bool:
        """True for exactly one caller while no desk state was ever put here: that caller
        rebuilds it from the SQL record; every other node (and every later start) keeps
        what the shared state holds."""
        return bool(await self._call(lambda: self.client.set(self.k("rebuilt"), self.node_id, nx=True)))

    async def continue_seq(self, name: str, after: int) -> None:
        await self._call(lambda: self._s_at_least(keys=[self.k("seq", name)], args=[str(int(after))]))

    async def restore(self, records: Sequence[Record]) -> int:
        """Put stored records back, versions kept; a record already here is left alone."""
        n = 0
        for r in records:
            kind = KINDS[type(r)]
            args = [self.prefix, "", 1, kind, r.id, "0", to_json(r), _facts(r), str(r.version)]
            res = await self._call(lambda args=args: self._s_commit(args=args))
            n += res[0] == "ok"
        return n

    async def message_count(self, conv_id: str) -> int:
        return int(await self._call(lambda: self.client.llen(self.k("msg", conv_id))))

    async def restore_messages(self, conv_id: str, msgs: Sequence[Message]) -> bool:
        if not msgs:
            return False
        bodies = []
        for m in msgs:
            d = m.to_dict()
            del d["seq"]
            bodies.append(_dumps(d))
        return bool(await self._call(lambda: self._s_fill(keys=[self.k("msg", conv_id)], args=bodies)))

    # --- leases and counters --------------------------------------------------------
    async def acquire_lease(self, name: str, holder: str, ttl: float, now: float) -> int | None:
        # The holder is scoped to this store (one per process): two nodes whose desks carry the
        # same name are still two holders, never one lease shared by both.
        args = [f"{holder}@{self.node_id}", repr(float(now)), repr(float(now + ttl))]
        token = await self._call(lambda: self._s_lease(keys=[self.k("lease", name), self.k("token")], args=args))
        return None if token is None else int(token)

    async def next_seq(self, name: str) -> int:
        return int(await self._call(lambda: self.client.incr(self.k("seq", name))))

    # --- the one write path ---------------------------------------------------------------
    async def commit(self, records: Sequence[Record], *, token: int | None = None) -> list[Record]:
        args: list[Any] = [self.prefix, "" if token is None else str(int(token)), len(records)]
        seen = set()
        out = []
        for r in records:
            kind = KINDS[type(r)]
            if (kind, r.id) in seen:
                raise ValueError(f"{kind} {r.id} appears twice in one commit")
            seen.add((kind, r.id))
            new = replace(r, version=r.version + 1)
            args += [kind, r.id, str(r.version), to_json(new), _facts(new), str(new.version)]
            out.append(new)
        res = await self._call(lambda: self._s_commit(args=args))
        if res[0] == "stale":
            raise StaleToken(f"fencing token {token} is older than {res[1]}")
        if res[0] == "conflict":
            raise Conflict(res[1], res[2], int(res[3]), int(res[4]))
        return out

    # --- reads --------------------------------------------------------------------------------
    async def _get(self, kind: str, rid: str):
        s = await self._call(lambda: self.client.hget(self.k("r", kind), rid))
        return None if s is None else self._decode(kind, s)

    async def _all(self, kind: str) -> list:
        vals = await self._call(lambda: self.client.hvals(self.k("r", kind)))
        return [self._decode(kind, s) for s in vals]

    async def _indexed(self, index: str, sorted_set: bool, kind: str = "conversation") -> list:
        vals = await self._call(lambda: self._s_records(keys=[index, self.k("r", kind)],
                                                        args=["z" if sorted_set else "s"]))
        return [self._decode(kind, s) for s in vals]

    async def _deref(self, pointers: str, field: str, kind: str):
        s = await self._call(lambda: self._s_deref(keys=[self.k(pointers), self.k("r", kind)], args=[field]))
        return None if s is None else self._decode(kind, s)

    async def conversation(self, conv_id: str) -> Conversation | None:
        return await self._get("conversation", conv_id)

    async def thread_conversation(self, customer_id: str, thread: str) -> Conversation | None:
        return await self._deref("th", _pair(customer_id, thread), "conversation")

    async def conversations(self, *, status: Status | None = None, customer_id: str | None = None) -> list[Conversation]:
        if customer_id is not None:
            out = await self._indexed(self.k("cu", customer_id), False)
            if status is not None:
                out = [c for c in out if c.status == status]
        elif status is not None:
            out = await self._indexed(self.k("st", Status(status).value), False)
        else:
            out = await self._all("conversation")
        return sorted(out, key=lambda c: (c.created_at, c.id))

    async def waiting(self, team: str | None = None) -> list[Conversation]:
        """Waiting conversations in queue order (all teams' queues merged when ``team`` is None)."""
        return await self._indexed(self.k("waiting") if team is None else self.k("q", team), True)

    async def queue_position(self, conv_id: str) -> int | None:
        """1-based position of a waiting conversation within its team's queue; None if not waiting."""
        rank = await self._call(lambda: self._s_position(keys=[self.k("qteam")], args=[self.prefix, conv_id]))
        return None if rank is None else int(rank) + 1

    async def assigned_to(self, agent_id: str) -> list[Conversation]:
        out = await self._indexed(self.k("as", agent_id), False)
        return sorted(out, key=lambda c: (c.offered_at or 0, c.id))

    async def loads(self) -> dict[str, int]:
        raw = await self._call(lambda: self.client.hgetall(self.k("loads")))
        return {a: int(n) for a, n in raw.items() if int(n) > 0}

    async def agent(self, agent_id: str) -> Agent | None:
        return await self._get("agent", agent_id)

    async def agents(self) -> list[Agent]:
        return sorted(await self._all("agent"), key=lambda a: a.id)

    async def ticket(self, ticket_id: str) -> Ticket | None:
        return await self._get("ticket", ticket_id)

    async def tickets(self, *, open_only: bool = False) -> list[Ticket]:
        ts = await self._all("ticket")
        return sorted((t for t in ts if t.is_open or not open_only), key=lambda t: (t.created_at, t.id))

    async def alarm_ticket(self, device_id: str, alarm_type: str) -> Ticket | None:
        return await self._deref("al", _pair(device_id, alarm_type), "ticket")

    async def contact(self, contact_id: str) -> Contact | None:
        return await self._get("contact", contact_id)

    async def contacts(self) -> list[Contact]:
        return sorted(await self._all("contact"), key=lambda c: c.id)

    # --- messages (append-only) ------------------------------------------------------------
    async def append_message(self, msg: Message) -> Message:
        d = msg.to_dict()
        del d["seq"]  # a message's seq is its place in the list
        body = _dumps(d)
        n = await self._call(lambda: self.client.rpush(self.k("msg", msg.conv_id), body))
        return replace(msg, seq=int(n))

    async def messages(self, conv_id: str, *, before: int | None = None, limit: int = 50) -> list[Message]:
        args = ["" if before is None else str(int(before)), str(max(0, int(limit)))]
        res = await self._call(lambda: self._s_messages(keys=[self.k("msg", conv_id)], args=args))
        first = int(res[0])
        return [Message.from_dict({**json.loads(s), "seq": first + i}) for i, s in enumerate(res[1:], 1)]


async def live_state(cfg, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The desk's live state as ``[desk] state`` says, open for as long as this task runs.

    "memory": a ``MemoryStore`` (one node). "redis": a ``RedisDeskStore`` on
    ``[storage] redis_url`` under ``[storage] redis_prefix`` + "desk:"; an unreachable
    Redis is a start-up error naming both keys (no fallback to memory: two nodes each
    believing they own the desk would assign conversations twice).
    """
    from .config import ConfigError
    from .state import MemoryStore

    if cfg.desk.state == "memory":
        task_status.started(MemoryStore())
        await trio.sleep_forever()
    url = cfg.storage.redis_url
    if not url:
        raise ConfigError(['desk.state: "redis" needs storage.redis_url (e.g. "redis://127.0.0.1:6379/0")'])
    store = RedisDeskStore(url, prefix=cfg.storage.redis_prefix + "desk:")
    try:
        await store.open()
    except StorageUnavailable as e:
        raise StorageUnavailable(f'[desk] state = "redis": cannot reach Redis at [storage] redis_url = '
                                 f'"{url}" ({e.reason}); start Redis or set [desk] state = "memory"') from None
    try:
        task_status.started(store)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await store.close()


__all__ = ["RedisDeskStore", "live_state", "queue_score", "to_json", "from_json"]
