"""Durable transcripts: the desk's conversations, messages, tickets and contacts reach SQLite."""

from __future__ import annotations

import trio

from kefu.config import from_dict
from kefu.desk import Desk
from kefu.persist import PersistingStore, Transcripts
from kefu.state import MemoryStore
from kefu.storage import open_store

from .conftest import keyword_classifier, small_settings


async def test_conversation_reaches_sqlite_in_order(nursery, tmp_path, recorder):
    cfg = from_dict({"storage": {"backend": "sqlite", "path": str(tmp_path / "kefu.db")}})
    async with open_store(cfg.storage, background=False) as sql:
        t = Transcripts(sql)
        await nursery.start(t.run)
        desk = Desk(small_settings(accept_timeout=0.0), store=PersistingStore(MemoryStore(), t),
                    classify=keyword_classifier, publish=recorder)
        await nursery.start(desk.run)
        await desk.agent_connected("alice")
        cid = (await desk.customer_message("chat", "ann", "when will my card arrive?"))["conversation"]["id"]
        await desk.customer_message("chat", "ann", "talk to a human")
        await desk.agent_action("alice", "reply", cid, text="Hello Ann")
        await desk.agent_action("alice", "resolve", cid)
        with trio.fail_after(10):
            await t.drained()
        assert t.stats.failed == 0
        row = await sql.get_conversation(cid)
        assert row.state == "resolved" and row.contact_id == "ann" and row.meta["team"] == "general"
        lines = await sql.list_messages(cid)
        texts = [m.body for m in lines]
        assert texts[0] == "when will my card arrive?" and "Hello Ann" in texts
        assert [m.meta["seq"] for m in lines] == sorted(m.meta["seq"] for m in lines)
        tickets = await sql.list_tickets()
        assert [tk.conversation_id for tk in tickets] == [cid] and tickets[0].status == "resolved"
        assert (await sql.get_contact("ann")).id == "ann"
