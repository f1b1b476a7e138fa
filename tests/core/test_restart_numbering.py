"""After a restart the desk continues conversation and ticket numbers after the stored ones
(whatever the live state: memory, or Redis that has never seen them), so a new
conversation never shares an id (and a transcript) with an old one."""

from __future__ import annotations

import trio

from kefu.config import from_dict
from kefu.record import DurableStore, restore
from kefu.state import MemoryStore
from kefu.storage import open_store
from kefu.storage.base import Conversation, Ticket


async def _numbering_after(cfg_storage) -> tuple[int, int]:
    async with open_store(cfg_storage, background=False) as store:
        live = MemoryStore()
        await restore(DurableStore(live, store), 0.0)
        return await live.next_seq("conversation"), await live.next_seq("ticket")


async def _store_some(cfg_storage) -> None:
    async with open_store(cfg_storage, background=False) as store:
        for n in (1, 2, 17, 3):
            await store.save_conversation(Conversation(id=f"cv-{n}", contact_id="c", channel="mqtt", state="closed"))
        await store.save_conversation(Conversation(id="cv-x9", contact_id="c", channel="mqtt", state="closed"))
        await store.save_ticket(Ticket(id="tk-5", subject="t", status="open", priority=2))


async def test_numbering_continues_after_stored_ids_sqlite(tmp_path):
    st = from_dict({"storage": {"backend": "sqlite", "path": str(tmp_path / "k.db")}}).storage
    assert await _numbering_after(st) == (1, 1)  # empty store: from 1
    await _store_some(st)
    with trio.fail_after(20):
        assert await _numbering_after(st) == (18, 6)


async def test_numbering_continues_after_stored_ids_postgres(postgres_dsn):
    import uuid

    import psycopg

    schema = "kefu_seq_" + uuid.uuid4().hex[:8]
    st = from_dict({"storage": {"backend": "postgres", "dsn": postgres_dsn, "pg_schema": schema}}).storage
    try:
        await _store_some(st)
        with trio.fail_after(20):
            assert await _numbering_after(st) == (18, 6)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
