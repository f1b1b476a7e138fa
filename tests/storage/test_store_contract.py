"""What every SQL backend must do, run against a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import time

import pytest
import trio

from kefu.storage import (
    AuditEntry, ChatMessage, Contact, Conversation, MetricSample, SessionRecord, StaleFence, StoredMessage,
    SubscriptionRecord, Ticket,
)


async def test_publish_is_queued_for_persistent_sessions_and_retained(store):
    mid = await store.persist_publish(StoredMessage("d/1/up", b"\x00\x01", qos=1, retain=True, properties=b"\x03ab",
                                                    sender="dev-1"), [("app", 1), ("ops", 2)])
    assert mid > 0
    queue = await store.load_queue("app")
    assert [(q.message.id, q.message.payload, q.qos, q.state, q.message.properties) for q in queue] == [
        (mid, b"\x00\x01", 1, "queued", b"\x03ab")]
    [retained] = await store.load_retained()
    assert (retained.topic, retained.payload, retained.sender) == ("d/1/up", b"\x00\x01", "dev-1")
    await store.persist_publish(StoredMessage("d/1/up", b"", retain=True))  # empty retained payload clears it
    assert await store.load_retained() == []


async def test_inflight_lifecycle_qos1_and_qos2(store):
    m1 = await store.persist_publish(StoredMessage("t", b"one"), [("c", 1)])
    m2 = await store.persist_publish(StoredMessage("t", b"two", qos=2), [("c", 2)])
    m3 = await store.persist_publish(StoredMessage("t", b"three"), [("c", 1)])
    await store.mark_sent("c", m1, 11)
    await store.mark_sent("c", m2, 12)
    await store.mark_pubrec("c", 12)
    await store.ack_delivery("c", 11)
    await store.save_session(SessionRecord("c"))  # waits for a commit, so the no-wait writes above are in too
    q = await store.load_queue("c")
    assert [(x.message.id, x.packet_id, x.state) for x in q] == [(m2, 12, "pubrec"), (m3, None, "queued")]
    await store.ack_delivery("c", 12)
    await store.mark_sent("c", m3, 13)
    await store.save_session(SessionRecord("c"))
    assert [(x.message.id, x.packet_id, x.state) for x in await store.load_queue("c")] == [(m3, 13, "sent")]


async def test_inbound_qos2_redelivery_is_stored_once(store):
    a = await store.persist_publish(StoredMessage("t", b"x", qos=2), [("sub", 2)], inbound=("pub", 7))
    b = await store.persist_publish(StoredMessage("t", b"x", qos=2, ), [("sub", 2)], inbound=("pub", 7))
    assert a == b
    assert len(await store.load_queue("sub")) == 1
    assert await store.inbound_pending("pub") == [7]
    await store.release_inbound("pub", 7)
    await store.save_session(SessionRecord("pub"))
    assert await store.inbound_pending("pub") == []


async def test_sessions_round_trip_and_expiry(store):
    subs = (SubscriptionRecord("a/#", 1), SubscriptionRecord("b/+", 2, True, True, 2, 9))
    await store.save_session(SessionRecord("keep", 5, 0xFFFFFFFF, subs, connected=False, disconnected_at=1.0))
    await store.save_session(SessionRecord("gone", 4, 60, subs, connected=False, disconnected_at=100.0))
    await store.save_session(SessionRecord("live", 5, 60, (), connected=True))
    await store.persist_publish(StoredMessage("a/1", b"x"), [("gone", 1)])
    s = await store.load_session("keep")
    assert s.subscriptions == subs and s.expiry_interval == 0xFFFFFFFF and s.protocol_level == 5
    assert await store.expire_sessions(now=159.0) == 0
    assert await store.expire_sessions(now=161.0) == 1
    assert [s.client_id for s in await store.load_sessions()] == ["keep", "live"]
    assert await store.load_queue("gone") == []
    await store.delete_session("keep")
    assert await store.load_session("keep") is None


async def test_conversation_fencing(store):
    conv = Conversation("c1", contact_id="p1", state="queued", meta={"lang": "zh"})
    await store.save_conversation(conv)
    await store.save_conversation(Conversation("c1", state="assigned", assigned_agent="alice"), fence=5)
    with pytest.raises(StaleFence):
        await store.save_conversation(Conversation("c1", state="assigned", assigned_agent="bob"), fence=4)
    await store.save_conversation(Conversation("c1", state="resolved", assigned_agent="alice"), fence=5)
    got = await store.get_conversation("c1")
    assert (got.state, got.assigned_agent, got.fence) == ("resolved", "alice", 5)
    await store.save_conversation(Conversation("c2", state="queued"))
    assert [c.id for c in await store.list_conversations(state="queued")] == ["c2"]


async def test_transcripts_encrypted_at_rest_and_searchable(store):
    await store.save_conversation(Conversation("c1"))
    lines = [("customer", "我的订单还没到，我要退款"), ("agent", "Sorry! Your REFUND is on its way."),
             ("customer", "谢谢 thanks"), ("bot", "100% done_ok")]
    ids = [await store.append_message(ChatMessage("c1", k, body)) for k, body in lines]
    assert [m.body for m in await store.list_messages("c1")] == [b for _, b in lines]
    assert [m.id for m in await store.list_messages("c1", after_id=ids[1])] == ids[2:]
    # at rest: the body column holds SM4 blobs, not the text
    raw = await store._read(lambda c: c.execute("SELECT body, key_id FROM chat_messages").fetchall())
    assert all(row[1] is not None and "退款".encode() not in bytes(row[0]) for row in raw)

    async def found(q, **kw):
        return [h.message_id for h in await store.search(q, **kw)]

    assert await found("退款") == [ids[0]]  # two characters: below trigram length
    assert await found("订单还没") == [ids[0]]  # Chinese, trigram index
    assert await found("refund") == [ids[1]]  # case-insensitive
    assert await found("thanks 谢谢") == [ids[2]]  # every term must occur
    assert await found("thanks 退款") == []
    assert await found("100%") == [ids[3]] and await found("_") == [ids[3]]  # LIKE metacharacters are literal
    hit = (await store.search("REFUND"))[0]
    assert hit.snippet.startswith("Sorry! Your [REFUND]") and hit.conversation_id == "c1"
    assert await found("退款", conversation_id="other") == []


async def test_contacts_personal_data_encrypted(store):
    c = Contact("p1", "crm-42", "张三", "zhang@example.com", "+86 138 0013 8000", {"city": "上海"})
    await store.save_contact(c)
    got = await store.get_contact("p1")
    assert (got.name, got.email, got.phone, got.attributes) == (c.name, c.email, c.phone, c.attributes)
    assert (await store.find_contact("crm-42")).id == "p1"
    raw = await store._read(lambda cur: cur.execute("SELECT pii FROM contacts").fetchone()[0])
    assert b"zhang@example.com" not in bytes(raw)


async def test_tickets_and_audit(store):
    await store.save_ticket(Ticket("t1", "Refund", fields={"order": "A-1"}))
    await store.save_ticket(Ticket("t1", "Refund", status="pending", assignee="alice", fields={"order": "A-1"}))
    t = await store.get_ticket("t1")
    assert (t.status, t.assignee, t.fields) == ("pending", "alice", {"order": "A-1"})
    assert [x.id for x in await store.list_tickets(status="pending")] == ["t1"]
    a = await store.audit(AuditEntry("alice", "ticket.update", "t1", {"status": "pending"}))
    [e] = await store.list_audit()
    assert (e.id, e.actor, e.detail) == (a, "alice", {"status": "pending"})


async def test_metric_buckets(store):
    base = 1_700_000_040.0  # a multiple of 60
    await store.record_metrics([MetricSample("rtt", float(i), base + i * 10, "node=a") for i in range(12)])
    await store.record_metrics([MetricSample("rtt", 1000.0, base, "node=b")])
    await store.audit(AuditEntry("t", "flush"))  # waits for a commit: the metrics are in
    b = await store.metric_buckets("rtt", base, base + 120, 60, labels="node=a")
    assert [(x.start, x.count, x.avg, x.min, x.max) for x in b] == [
        (base, 6, 2.5, 0.0, 5.0), (base + 60, 6, 8.5, 6.0, 11.0)]
    assert (await store.metric_buckets("rtt", base, base + 60, 60))[0].max == 1000.0


async def test_retention_prunes_old_rows_only(cfg, master):
    from dataclasses import replace

    from kefu.storage import open_store

    now = time.time()
    async with open_store(replace(cfg, retention_days=1, metrics_retention_days=1), master=master,
                          background=False) as store:
        old = await store.append_message(ChatMessage("c", "customer", "old 旧消息", created_at=now - 3 * 86400))
        new = await store.append_message(ChatMessage("c", "customer", "new 新消息", created_at=now))
        await store.record_metrics([MetricSample("m", 1, now - 3 * 86400), MetricSample("m", 2, now)])
        await store.persist_publish(StoredMessage("t", b"x", created_at=now - 7200))  # nobody owed it
        owed = await store.persist_publish(StoredMessage("t", b"y", created_at=now - 7200), [("c", 1)])
        deleted = await store.prune(now)
        assert deleted["chat_messages"] == 1 and deleted["mqtt_messages"] == 1
        assert [m.id for m in await store.list_messages("c")] == [new]
        assert await store.search("旧消息") == [] and len(await store.search("新消息")) == 1
        assert [q.message.id for q in await store.load_queue("c")] == [owed]
        assert old != new


async def test_group_commit_batches_concurrent_writers(store):
    """Many concurrent publishers share commits: far fewer transactions than messages."""
    before = store._w.committed_batches
    n = 2000

    async def one(i):
        await store.persist_publish(StoredMessage(f"t/{i % 7}", b"x" * 32), [("c", 1)])

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    assert await store.count_messages() == n
    assert store._w.committed_batches - before < n / 5
    assert len(await store.load_queue("c", limit=5000)) == n


async def test_one_failing_operation_does_not_fail_its_batch(store):
    results = {}

    async def publish(i):
        results[i] = await store.persist_publish(StoredMessage("t", bytes([i])))

    async def bad():
        with pytest.raises(Exception) as info:
            await store.run_in_writer(lambda conn: conn.execute("INSERT INTO no_such_table VALUES (1)"))
        results["bad"] = info.value

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(publish, i)
        nursery.start_soon(bad)
        for i in range(20, 40):
            nursery.start_soon(publish, i)
    assert "no_such_table" in str(results.pop("bad"))
    assert len(set(results.values())) == 40 and await store.count_messages() == 40


async def test_migrations_recorded(store):
    states = await store.migration_status()
    assert [s.version for s in states] == [1, 2, 3, 4, 5]
    assert all(s.applied_at is not None for s in states)
    assert states[0].done and states[1].done


async def test_errors_in_the_block_propagate_unwrapped(cfg, master):
    from kefu.storage import open_store

    with pytest.raises(KeyError, match="mine"):
        async with open_store(cfg, master=master) as s:  # background tasks running
            assert s.health().ready
            raise KeyError("mine")


async def test_persist_many_is_one_ordered_commit(store):
    before = store._w.committed_batches
    ids = await store.persist_many([(StoredMessage("t", bytes([i])), [("c", 1)], None, None) for i in range(50)])
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert store._w.committed_batches - before == 1
    assert [q.message.payload for q in await store.load_queue("c")] == [bytes([i]) for i in range(50)]
