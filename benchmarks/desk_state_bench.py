"""The desk's live state, in memory and on Redis: operations per second, one caller at a time.

    .venv/bin/python benchmarks/desk_state_bench.py [redis://127.0.0.1:6379/0]

Rows: ``commit`` of one conversation (a queue move: enqueue or offer, with the agent
record, as the assignment pass writes it), ``waiting()`` of a team queue with 1000
conversations waiting, ``queue_position`` in that queue, ``append_message``. One task
calls in a loop, so each Redis row is one round trip through a worker thread; several
desk tasks overlap their calls (the store's limiter allows 8 at once).
"""

from __future__ import annotations

import sys
import time
import uuid

import trio

from kefu import conversations as C
from kefu.agents import Agent
from kefu.conversations import Message
from kefu.state import MemoryStore
from kefu.state_redis import RedisDeskStore

N = 2000
QUEUE = 1000


async def bench(store) -> dict[str, float]:
    out = {}
    (agent,) = await store.commit([Agent("a", teams=frozenset({"g"}), capacity=10**9)])
    convs = []
    for i in range(QUEUE):
        c, _ = C.open_conversation(f"q-{i}", f"c{i}", "main", "chat", i)
        convs.append(C.enqueue(c, team="g", priority=i % 4, seq=i, now=i, reason="x")[0])
    convs = await store.commit(convs)
    fresh = []
    for i in range(N):
        c, _ = C.open_conversation(f"n-{i}", f"d{i}", "main", "chat", i)
        fresh.append(C.enqueue(c, team="h", priority=2, seq=QUEUE + i, now=i, reason="x")[0])
    fresh = await store.commit(fresh)
    t = time.perf_counter()
    for c in fresh:
        o, _ = C.offer(c, "a", 1.0, None)
        _, agent = await store.commit([o, agent])
    out["commit (conversation + agent)"] = N / (time.perf_counter() - t)
    reps = 50
    t = time.perf_counter()
    for _ in range(reps):
        await store.waiting("g")
    out[f"waiting() of {QUEUE}"] = reps / (time.perf_counter() - t)
    t = time.perf_counter()
    for c in convs[:N // 2]:
        await store.queue_position(c.id)
    out["queue_position"] = (N // 2) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(N):
        await store.append_message(Message("q-1", "customer", "hello there", float(i)))
    out["append_message"] = N / (time.perf_counter() - t)
    return out


async def main(url: str) -> None:
    mem = await bench(MemoryStore())
    red_store = await RedisDeskStore(url, prefix=f"kefu-bench:{uuid.uuid4().hex[:8]}:").open()
    try:
        red = await bench(red_store)
    finally:
        await red_store.delete_all()
        await red_store.close()
    print(f"| operation | memory ops/s | Redis ops/s ({url}) |")
    print("|---|---|---|")
    for k in mem:
        print(f"| {k} | {mem[k]:,.0f} | {red[k]:,.0f} |")


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0")
