"""The state interface's contract: compare-and-set, fencing, indexes.

Every test runs over each implementation (the ``store`` fixture in conftest.py: the
in-memory store and RedisDeskStore on the real Redis); tests/core/test_state_redis.py
has the Redis-only checks (two nodes, stale leases, serialisation).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from kefu import conversations as C
from kefu.agents import Agent
from kefu.conversations import Message, Status
from kefu.desk import Desk
from kefu.state import Conflict, StaleToken

from .conftest import keyword_classifier, small_settings


async def test_compare_and_set_is_all_or_nothing(store):
    s = store
    conv, _ = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    a = Agent("alice", teams=frozenset({"g"}))
    conv, a = await s.commit([conv, a])
    assert (conv.version, a.version) == (1, 1)
    with pytest.raises(Conflict, match="conversation cv-1: expected version 0, store has 1"):
        await s.commit([C.open_conversation("cv-1", "other", "main", "chat", 0)[0]])  # id taken
    q, _ = C.enqueue(conv, team="g", priority=2, seq=1, now=1, reason="x")
    stale_agent = replace(a, version=0)
    with pytest.raises(Conflict):
        await s.commit([q, stale_agent])
    assert (await s.conversation("cv-1")).status == Status.BOT  # the conversation half was not applied
    assert await s.waiting() == []
    (q,) = await s.commit([q])
    assert [c.id for c in await s.waiting("g")] == ["cv-1"]
    o, _ = C.offer(q, "alice", 2, None)
    await s.commit([o, a])
    assert await s.waiting() == [] and [c.id for c in await s.assigned_to("alice")] == ["cv-1"]
    assert await s.loads() == {"alice": 1}
    # two writers offering the same waiting conversation: the second one's commit fails
    with pytest.raises(Conflict):
        await s.commit([replace(C.offer(q, "bob", 2, None)[0])])


async def test_fencing_tokens(store):
    s = store
    t1 = await s.acquire_lease("desk", "n1", 10, now=0)
    assert await s.acquire_lease("desk", "n2", 10, now=5) is None  # held
    assert await s.acquire_lease("desk", "n1", 10, now=5) == t1  # renewal keeps the token
    t2 = await s.acquire_lease("desk", "n2", 10, now=16)  # n1 paused past its lease
    assert t2 > t1
    conv, _ = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    with pytest.raises(StaleToken):
        await s.commit([conv], token=t1)  # n1 wakes up: its decisions are refused
    await s.commit([conv], token=t2)


async def test_threads_messages_and_alarm_index(store):
    s = store
    c1, _ = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    (c1,) = await s.commit([c1])
    closed, _ = C.close(c1, 5)
    c2, _ = C.open_conversation("cv-2", "cu", "main", "chat", 6)
    await s.commit([closed, c2])
    assert (await s.thread_conversation("cu", "main")).id == "cv-2"
    for i in range(5):
        await s.append_message(Message("cv-2", "customer", f"m{i}", i))
    page = await s.messages("cv-2", limit=2)
    assert [m.seq for m in page] == [4, 5]
    assert [m.text for m in await s.messages("cv-2", before=4, limit=10)] == ["m0", "m1", "m2"]


async def test_a_second_desk_on_the_same_store_leaves_assignment_to_the_lease_holder(recorder, store):
    one = Desk(small_settings(accept_timeout=0.0), store=store, classify=keyword_classifier, publish=recorder,
               node="one", clock=lambda: 100.0)
    two = Desk(small_settings(accept_timeout=0.0), store=store, classify=keyword_classifier, publish=recorder,
               node="two", clock=lambda: 100.0)
    await one.setup()
    await two.setup()
    assert one._token is not None and two._token is None
    await two.agent_action("alice", "sign_in")
    cid = (await two.customer_message("chat", "ann", "human please"))["conversation"]["id"]
    assert (await store.conversation(cid)).status == Status.QUEUED  # node two does not assign
    await one.agent_action("bob", "sign_in")  # the lease holder does
    assert (await store.conversation(cid)).status == Status.ASSIGNED
