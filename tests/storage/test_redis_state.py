"""Shared node state on the real Redis: fenced assignment locks (two nodes racing), presence,
queues. Every test uses its own key prefix, deleted afterwards."""

from __future__ import annotations

import pytest
import redis
import trio

from kefu.storage import Conversation, StaleFence, StorageUnavailable, open_store
from kefu.storage.redis import RedisState


@pytest.fixture
async def two_nodes(redis_url, redis_prefix):
    async with RedisState(redis_url, prefix=redis_prefix, node_id="node-a") as a, \
            RedisState(redis_url, prefix=redis_prefix, node_id="node-b") as b:
        yield a, b


async def test_two_nodes_racing_never_both_get_the_lock(two_nodes):
    a, b = two_nodes
    for conv in [f"conv-{i}" for i in range(50)]:
        won = []

        async def grab(node):
            lease = await node.acquire(conv, ttl_s=30)
            if lease is not None:
                won.append((node.node_id, lease.token))

        async with trio.open_nursery() as n:
            for _ in range(4):  # several concurrent attempts from each node
                n.start_soon(grab, a)
                n.start_soon(grab, b)
        owners = {o for o, _ in won}
        assert len(owners) == 1, won  # exactly one node holds it
        assert len({t for _, t in won}) == 1  # re-acquiring by the holder gives the same token


async def test_fencing_token_stops_a_stale_holder(two_nodes, sqlite_cfg, master):
    """A pauses past its TTL, B takes the lock and assigns; A's late write is refused."""
    a, b = two_nodes
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        await store.save_conversation(Conversation("c1", state="queued"))
        lease_a = await a.acquire("c1", ttl_s=30)
        assert await b.acquire("c1") is None
        # A stalls; its lock is lost (expiry, simulated by deleting the key the TTL would remove)
        a.client.delete(lease_a.key)
        lease_b = await b.acquire("c1", ttl_s=30)
        assert lease_b.token > lease_a.token
        await store.save_conversation(Conversation("c1", state="assigned", assigned_agent="bob"), fence=lease_b.token)
        assert not await a.renew(lease_a)  # A learns it lost the lock...
        with pytest.raises(StaleFence):  # ...and even if it does not check, its write is refused
            await store.save_conversation(Conversation("c1", state="assigned", assigned_agent="amy"),
                                          fence=lease_a.token)
        assert (await store.get_conversation("c1")).assigned_agent == "bob"
        assert not await a.release(lease_a)  # releasing a lost lease never frees B's lock
        assert await b.acquire("c1", owner="node-a") is None
        assert await b.release(lease_b)
        assert await a.acquire("c1") is not None


async def test_presence_ttl_and_offline(two_nodes):
    a, b = two_nodes
    await a.heartbeat("alice", ttl_s=60, info={"node": "a", "load": 2})
    await b.heartbeat("bob", ttl_s=60)
    await b.heartbeat("carol", ttl_s=0)  # a heartbeat that has already expired
    assert await a.online_agents() == {"alice": {"node": "a", "load": 2}, "bob": {}}
    await a.offline("alice")
    assert list(await b.online_agents()) == ["bob"]


async def test_queue_priority_fifo_and_atomic_dequeue(two_nodes):
    a, b = two_nodes
    for i, prio in enumerate([0, 0, 5, 0, 5]):
        await a.enqueue("support", f"conv-{i}", prio)
    assert await a.queue_items("support") == ["conv-2", "conv-4", "conv-0", "conv-1", "conv-3"]
    assert await b.position("support", "conv-0") == 2
    assert await a.remove("support", "conv-1")
    taken = []

    async def worker(node):
        while (item := await node.dequeue("support")) is not None:
            taken.append(item)

    async with trio.open_nursery() as n:
        n.start_soon(worker, a)
        n.start_soon(worker, b)
    assert sorted(taken) == ["conv-0", "conv-2", "conv-3", "conv-4"]  # each exactly once
    assert await a.queue_length("support") == 0


async def test_unreachable_redis_is_storage_unavailable(free_port):
    with pytest.raises(StorageUnavailable, match="redis"):
        await RedisState(f"redis://127.0.0.1:{free_port}/0").open()


def test_redis_prefix_cleanup_leaves_nothing(redis_url, redis_prefix):
    async def main():
        async with RedisState(redis_url, prefix=redis_prefix) as s:
            await s.acquire("x")
            await s.heartbeat("y")
            assert await s.delete_all() >= 2
    trio.run(main)
    assert list(redis.Redis.from_url(redis_url).scan_iter(match=redis_prefix + "*")) == []
