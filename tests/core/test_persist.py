"""The SQL store is the desk's record: what an action returns is committed, and a new
process rebuilds the same desk from it (SQLite here; the subprocess tests in
tests/durable/test_desk_restart.py do it through ``kefu serve`` on SQLite and PostgreSQL)."""

from __future__ import annotations

import trio
import trio.testing

from kefu.config import from_dict
from kefu.desk import Desk
from kefu.record import DurableStore, restore
from kefu.state import MemoryStore
from kefu.storage import open_store

from .conftest import keyword_classifier, small_settings


def _cfg(tmp_path):
    return from_dict({"storage": {"backend": "sqlite", "path": str(tmp_path / "kefu.db")}}).storage


async def _snapshot(store) -> dict:
    convs = {c.id: c for c in await store.conversations()}
    return {
        "conversations": convs,
        "messages": {cid: [(m.seq, m.sender, m.text, m.private) for m in await store.messages(cid, limit=1000)]
                     for cid in convs},
        "tickets": {t.id: t for t in await store.tickets()},
        "contacts": {c.id: c for c in await store.contacts()},
        "waiting": [c.id for c in await store.waiting()],
    }


async def test_acknowledged_actions_are_in_sqlite_and_restore_the_desk(tmp_path, recorder):
    async with open_store(_cfg(tmp_path), background=False) as sql:
        async with trio.open_nursery() as nursery:
            store = DurableStore(MemoryStore(), sql)
            await restore(store, 0.0)
            desk = Desk(small_settings(accept_timeout=0.0), store=store, classify=keyword_classifier,
                        publish=recorder)
            await nursery.start(desk.run)
            await desk.agent_connected("alice")
            cid = (await desk.customer_message("chat", "ann", "when will my card arrive?"))["conversation"]["id"]
            await desk.customer_message("chat", "ann", "talk to a human")
            await desk.agent_action("alice", "reply", cid, text="Hello Ann")
            await desk.agent_action("alice", "note", cid, text="VIP, be nice")
            for who in ("cyd", "dan", "eve", "fay"):  # alice (capacity 2) takes one; three wait in order
                await desk.customer_message("mqtt", who, "talk to a human")
            # Returned means committed: read through a second connection, no waiting.
            row = await sql.get_conversation(cid)
            assert row.state == "assigned" and row.contact_id == "ann" and row.meta["team"] == "general"
            lines = await sql.list_messages(cid)
            assert [m.seq for m in lines] == list(range(1, len(lines) + 1))
            assert any(m.private and m.body == "VIP, be nice" for m in lines)
            before = await _snapshot(store)
            assert len(before["waiting"]) == 3
            nursery.cancel_scope.cancel()

    # A new process: empty live state, rebuilt from the record.
    async with open_store(_cfg(tmp_path), background=False) as sql:
        store = DurableStore(MemoryStore(), sql)
        counts = await restore(store, 1.0)
        assert counts["conversations"] == len(before["conversations"])
        after = await _snapshot(store)
        assert after == before
        agent = await store.agent("alice")
        assert agent is not None and agent.status.value == "offline"  # its connection died with the process
        assert await store.next_seq("conversation") == len(before["conversations"]) + 1  # ids continue
        assert await store.next_seq("ticket") == len(before["tickets"]) + 1


async def test_an_offer_nobody_accepted_is_offered_again_after_restart(tmp_path, recorder):
    async with open_store(_cfg(tmp_path), background=False) as sql:
        async with trio.open_nursery() as nursery:
            store = DurableStore(MemoryStore(), sql)
            await restore(store, 0.0)
            desk = Desk(small_settings(accept_timeout=60.0), store=store, classify=keyword_classifier,
                        publish=recorder)
            await nursery.start(desk.run)
            await desk.agent_connected("alice")
            res = await desk.customer_message("chat", "ann", "talk to a human")
            cid = res["conversation"]["id"]
            conv = await store.conversation(cid)
            assert conv.status.value == "assigned" and conv.accept_deadline is not None
            nursery.cancel_scope.cancel()
    async with open_store(_cfg(tmp_path), background=False) as sql:
        async with trio.open_nursery() as nursery:
            store = DurableStore(MemoryStore(), sql)
            counts = await restore(store, desk.now())
            assert counts["offers_requeued"] == 1
            assert [c.id for c in await store.waiting()] == [cid]  # at the front of its queue
            desk = Desk(small_settings(accept_timeout=60.0), store=store, classify=keyword_classifier,
                        publish=recorder)
            await nursery.start(desk.run)
            await desk.agent_connected("alice")  # back online: offered again
            conv = await store.conversation(cid)
            assert conv.status.value == "assigned" and conv.assignee == "alice"
            nursery.cancel_scope.cancel()


async def test_a_transcript_whose_oldest_lines_were_pruned_continues_after_its_last_seq(tmp_path):
    from kefu.conversations import Message

    live = MemoryStore()
    await live.restore_messages("cv-1", [Message("cv-1", "customer", f"line {n}", 0.0, seq=n) for n in (41, 42)])
    m = await live.append_message(Message("cv-1", "agent", "next", 1.0))
    assert m.seq == 43
    assert [x.seq for x in await live.messages("cv-1", before=43)] == [41, 42]
    assert [x.seq for x in await live.messages("cv-1", before=42, limit=5)] == [41]


async def test_sla_timers_resume_from_the_stored_deadlines(tmp_path, recorder):
    from kefu.tickets import SlaTargets

    sla = SlaTargets((60, 300, 900, 3600), (600, 3000, 9000, 36000))
    clock = [1_000_000.0]
    async with open_store(_cfg(tmp_path), background=False) as sql:
        store = DurableStore(MemoryStore(), sql)
        await restore(store, clock[0])
        desk = Desk(small_settings(sla=sla), store=store, classify=keyword_classifier, publish=recorder,
                    clock=lambda: clock[0])
        await desk.setup()
        await desk.customer_message("chat", "ann", "talk to a human")  # nobody online: queued, ticketed
        (ticket,) = await store.tickets()
        assert ticket.first_response_due == clock[0] + 900  # normal priority
    clock[0] += 901  # kefu was down when the first-response deadline passed
    async with open_store(_cfg(tmp_path), background=False) as sql:
        store = DurableStore(MemoryStore(), sql)
        await restore(store, clock[0])
        desk = Desk(small_settings(sla=sla), store=store, classify=keyword_classifier, publish=recorder,
                    clock=lambda: clock[0])
        await desk.setup()  # schedules the stored deadline
        async with store.unit():  # a timer acknowledges nothing; here we wait for its writes
            await desk.fire_due(clock[0])
        (t2,) = await store.tickets()
        assert t2.id == ticket.id and t2.first_response_due == ticket.first_response_due
        assert t2.breached == frozenset({"first_response"})
        row = await sql.get_ticket(ticket.id)  # and the breach is in the record
        assert "first_response" in row.fields["breached"]


async def test_webhooks_and_their_waiting_deliveries_survive_a_restart(tmp_path, recorder):
    from kefu.record import restore_webhooks

    async with open_store(_cfg(tmp_path), background=False) as sql:
        store = DurableStore(MemoryStore(), sql)
        await restore(store, 0.0)
        desk = Desk(small_settings(), store=store, classify=keyword_classifier, publish=recorder)
        await restore_webhooks(desk, store)
        await desk.setup()
        hook = await desk.add_webhook("http://127.0.0.1:9/hook", ["conversation_created"])
        gone = await desk.add_webhook("http://127.0.0.1:9/other", ["conversation_created"])
        await desk.delete_webhook(gone["id"])
        await desk.customer_message("chat", "ann", "hello")  # returned: its webhook delivery is kept too
        (waiting,) = [d for _, _, d in await sql.desk_records("webhook_delivery")]
        assert waiting["endpoint"] == hook["id"] and waiting["type"] == "conversation_created"
    async with open_store(_cfg(tmp_path), background=False) as sql:
        store = DurableStore(MemoryStore(), sql)
        await restore(store, 1.0)
        desk = Desk(small_settings(), store=store, classify=keyword_classifier, publish=recorder)
        assert await restore_webhooks(desk, store) == 1
        assert [ep.id for ep in desk.webhooks.endpoints] == [hook["id"]]
        assert desk.webhooks.endpoints[0].secret == hook["secret"]
        queued = list(desk.webhooks._lanes[hook["id"]].q)
        assert [(d, t) for d, t, _ in queued] == [(waiting["delivery"], "conversation_created")]


async def test_a_kept_delivery_is_sent_after_the_restart_and_then_forgotten(tmp_path, recorder):
    from kefu.record import restore_webhooks
    from kefu.webhooks import Endpoint

    from .httpserver import TestServer

    async def ok(req):
        return 200, b"{}"

    async with trio.open_nursery() as nursery:
        server = await nursery.start(TestServer(ok).serve)
        async with open_store(_cfg(tmp_path), background=False) as sql:
            store = DurableStore(MemoryStore(), sql)
            await restore(store, 0.0)
            desk = Desk(small_settings(), store=store, classify=keyword_classifier, publish=recorder)
            desk.webhooks.add(Endpoint("cfg", server.url("/hook"), "s3cret", frozenset({"conversation_created"})))
            await restore_webhooks(desk, store)
            await desk.setup()
            await desk.customer_message("chat", "ann", "hello")  # the dispatcher is not running: not sent
            (waiting,) = [d for _, _, d in await sql.desk_records("webhook_delivery")]
        async with open_store(_cfg(tmp_path), background=False) as sql:
            store = DurableStore(MemoryStore(), sql)
            await restore(store, 1.0)
            desk = Desk(small_settings(), store=store, classify=keyword_classifier, publish=recorder)
            desk.webhooks.add(Endpoint("cfg", server.url("/hook"), "s3cret", frozenset({"conversation_created"})))
            await restore_webhooks(desk, store)
            await nursery.start(desk.webhooks.run)
            (req,) = await server.wait_requests(1)
            assert req.headers["x-kefu-delivery"] == waiting["delivery"]  # the same delivery, sent once
            with trio.fail_after(10):
                await trio.testing.wait_all_tasks_blocked()  # the worker has its answer and is idle again
            assert desk.webhooks.stats("cfg").delivered == 1
            await sql.run_in_writer(lambda conn: None)  # everything queued before it is committed now
            assert await sql.desk_records("webhook_delivery") == []
        nursery.cancel_scope.cancel()


async def test_an_action_that_cannot_be_committed_is_refused_not_acknowledged(tmp_path, recorder):
    import sqlite3
    from dataclasses import replace as dc_replace

    import pytest

    from kefu.errors import DeskError

    cfg = dc_replace(_cfg(tmp_path), sqlite_busy_timeout_ms=20, commit_timeout=0.5)
    async with open_store(cfg, background=False) as sql:
        store = DurableStore(MemoryStore(), sql)
        await restore(store, 0.0)
        desk = Desk(small_settings(), store=store, classify=keyword_classifier, publish=recorder)
        await desk.setup()
        await desk.customer_message("chat", "ann", "hello")
        blocker = sqlite3.connect(cfg.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(DeskError, match="not stored, try again") as e:
            await desk.customer_message("chat", "ann", "are you there?")
        assert e.value.status == 503 and e.value.code == "unavailable"  # HTTP 503, /chat error "unavailable"
        blocker.execute("COMMIT")
        blocker.close()
        await sql.wait_ready(True)
        res = await desk.customer_message("chat", "ann", "hello again")  # acknowledged once committed
        lines = [m.body for m in await sql.list_messages(res["conversation"]["id"]) if m.sender_kind == "customer"]
        assert lines[0] == "hello" and lines[-1] == "hello again"  # the refused one may be there (at least once)
