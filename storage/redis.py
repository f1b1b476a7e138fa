"""State shared between kefu nodes, in Redis: agent presence, work queues, assignment locks.

Why fencing tokens: a lock with a TTL alone cannot stop double assignment. Node A takes
the lock for conversation C, stalls (GC pause, network partition) past the TTL, node B
takes the lock and assigns C to agent X, then A wakes up and assigns C to agent Y. So
every successful ``acquire`` also returns a *fencing token*, a number from one counter
that only grows (``INCR``), and every write of the assignment carries it:
``store.save_conversation(conv, fence=token)`` refuses (StaleFence) a token older than
the one already stored. A's late write loses, whatever the clocks say.

Acquire, renew and release are Lua scripts, so "check the holder, then act" is one
atomic step in Redis. Presence and lock expiry use Redis's own clock (``TIME``) so nodes
with skewed clocks agree.

redis-py has no trio client: each call runs in a worker thread under a capacity
limiter (the bound), and errors that mean "Redis is not reachable" become
StorageUnavailable.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import redis as redis_lib
import trio

from .base import StorageUnavailable

# KEYS[1] lock key, KEYS[2] fence counter; ARGV[1] owner, ARGV[2] ttl ms
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if string.sub(cur, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, sep + 1))
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS[1] lock key; ARGV[1] "owner|token", ARGV[2] ttl ms (renew) -> 1 when still the holder
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] presence zset, KEYS[2] info hash; ARGV[1] agent, ARGV[2] ttl ms, ARGV[3] info json
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return now
"""

# KEYS[1] presence zset, KEYS[2] info hash -> flat list agent, info, ...
_ONLINE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {}
for _, a in ipairs(live) do
  out[#out + 1] = a
  out[#out + 1] = redis.call('HGET', KEYS[2], a) or '{}'
end
return out
"""

# KEYS[1] queue zset, KEYS[2] sequence; ARGV[1] item, ARGV[2] priority (higher first)
_ENQUEUE = """
local seq = redis.call('INCR', KEYS[2])
local score = -tonumber(ARGV[2]) * 1e12 + seq
redis.call('ZADD', KEYS[1], 'NX', score, ARGV[1])
return redis.call('ZRANK', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """A held assignment lock. ``token`` is the fencing token to pass with every write."""

    key: str
    owner: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.owner}|{self.token}"


class RedisState:
    """Shared node state. Keys all start with ``prefix`` (one kefu cluster per prefix)."""

    def __init__(self, url: str, *, prefix: str = "kefu:", node_id: str | None = None, concurrency: int = 8) -> None:
        self.url = url
        self.prefix = prefix
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self._limiter = trio.CapacityLimiter(concurrency)
        self.client: redis_lib.Redis | None = None

    async def open(self) -> "RedisState":
        def connect():
            c = redis_lib.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=3,
                                         health_check_interval=30, decode_responses=True)
            c.ping()
            return c

        try:
            self.client = await trio.to_thread.run_sync(connect)
        except redis_lib.RedisError as e:
            raise StorageUnavailable(f"redis at {self.url}: {e}") from e
        c = self.client
        self._acquire = c.register_script(_ACQUIRE)
        self._renew = c.register_script(_RENEW)
        self._release = c.register_script(_RELEASE)
        self._heartbeat = c.register_script(_HEARTBEAT)
        self._online = c.register_script(_ONLINE)
        self._enqueue = c.register_script(_ENQUEUE)
        return self

    async def close(self) -> None:
        if self.client is not None:
            c, self.client = self.client, None
            await trio.to_thread.run_sync(c.close)

    async def __aenter__(self) -> "RedisState":
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, fn: Callable[[], Any]) -> Any:
        if self.client is None:
            raise StorageUnavailable("redis state is not open")
        try:
            return await trio.to_thread.run_sync(fn, limiter=self._limiter)
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as e:
            raise StorageUnavailable(f"redis at {self.url}: {e}") from e

    def k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> bool:
        return bool(await self._call(self.client.ping))

    # ------------------------------------------------------------ assignment locks

    async def acquire(self, conversation_id: str, owner: str | None = None, ttl_s: float = 30.0) -> Lease | None:
        """Take the assignment lock for a conversation, or None if another owner holds it.
        Re-acquiring by the same owner extends it and returns the same token."""
        owner = owner or self.node_id
        if "|" in owner:
            raise ValueError("owner must not contain '|'")
        key = self.k("lock", conversation_id)
        token = await self._call(lambda: self._acquire(keys=[key, self.k("fence")], args=[owner, int(ttl_s * 1000)]))
        return None if token is None else Lease(key, owner, int(token))

    async def renew(self, lease: Lease, ttl_s: float = 30.0) -> bool:
        """Extend a held lock; False when it was lost (expired and maybe taken)."""
        return bool(await self._call(lambda: self._renew(keys=[lease.key], args=[lease.value, int(ttl_s * 1000)])))

    async def release(self, lease: Lease) -> bool:
        """Release if still held by this lease; False when it had already been lost."""
        return bool(await self._call(lambda: self._release(keys=[lease.key], args=[lease.value])))

    # ------------------------------------------------------------ presence

    async def heartbeat(self, agent_id: str, ttl_s: float = 30.0, info: dict | None = None) -> None:
        """Mark an agent online until ``ttl_s`` from now (Redis time); repeat to stay online."""
        data = json.dumps(info or {}, ensure_ascii=False, separators=(",", ":"))
        await self._call(lambda: self._heartbeat(keys=[self.k("presence"), self.k("presence_info")],
                                                 args=[agent_id, int(ttl_s * 1000), data]))

    async def offline(self, agent_id: str) -> None:
        def run():
            p = self.client.pipeline()
            p.zrem(self.k("presence"), agent_id)
            p.hdel(self.k("presence_info"), agent_id)
            p.execute()
        await self._call(run)

    async def online_agents(self) -> dict[str, dict]:
        flat = await self._call(lambda: self._online(keys=[self.k("presence"), self.k("presence_info")]))
        return {flat[i]: json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    # ------------------------------------------------------------ queues

    async def enqueue(self, queue: str, item: str, priority: int = 0) -> int:
        """Add ``item`` (FIFO within a priority, higher priority first); returns its position."""
        return int(await self._call(lambda: self._enqueue(keys=[self.k("queue", queue), self.k("queue_seq")],
                                                          args=[item, int(priority)])))

    async def dequeue(self, queue: str) -> str | None:
        """Take the first item; atomic, so two nodes never take the same one."""
        out = await self._call(lambda: self.client.zpopmin(self.k("queue", queue)))
        return out[0][0] if out else None

    async def position(self, queue: str, item: str) -> int | None:
        return await self._call(lambda: self.client.zrank(self.k("queue", queue), item))

    async def remove(self, queue: str, item: str) -> bool:
        return bool(await self._call(lambda: self.client.zrem(self.k("queue", queue), item)))

    async def queue_length(self, queue: str) -> int:
        return int(await self._call(lambda: self.client.zcard(self.k("queue", queue))))

    async def queue_items(self, queue: str, limit: int = 100) -> list[str]:
        return list(await self._call(lambda: self.client.zrange(self.k("queue", queue), 0, limit - 1)))

    # ------------------------------------------------------------ maintenance

    async def delete_all(self) -> int:
        """Delete every key under this prefix (tests; `kefu` never calls it)."""
        def run():
            n = 0
            for key in self.client.scan_iter(match=self.prefix.replace("*", "\\*") + "*", count=500):
                n += self.client.delete(key)
            return n
        return await self._call(run)
