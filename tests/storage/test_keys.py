"""Keys through a real store: rotation re-encrypts beside live writes, device replay state
and egress counters survive restarts, changes made by another process (the CLI) reach a
running one."""

from __future__ import annotations

import os

import pytest
import trio

from kefu.storage import ChatMessage, Contact, StoredMessage, open_store
from kefu.storage.crypto import (
    DIR_TO_KEFU, KeyringError, MasterKey, ReplayDetected, RevokedKey, parse_envelope, seal_envelope,
)


async def test_rotate_reencrypts_beside_live_writes(cfg, master):
    async with open_store(cfg, master=master, background=False) as store:
        old = store.keys.keyring.active_data_key
        for i in range(120):
            await store.append_message(ChatMessage("c1", "customer", f"消息 {i} message"))
        await store.save_contact(Contact("p1", None, "李四", "li@example.com"))
        secret = {"hex": "00" * 32}  # the desk's sealed records (kefu/record.py) are re-encrypted too
        await store.wait_written(await store.queue_write("desk", [store.desk_record_row(
            "setting", "widget.visitor_secret", 1, secret, secret=True)]))
        store.keys.batch = 25  # several batches, so writes interleave
        new = await store.keys.rotate()
        assert store.keys.keyring.active_data_key == new.key_id != old

        async def live_writes():
            for i in range(30):
                await store.append_message(ChatMessage("c1", "agent", f"live {i}"))

        async with trio.open_nursery() as n:
            n.start_soon(live_writes)
            moved = await store.keys.rekey()
        assert moved >= 122
        assert await store.count_key_uses(old) == 0
        assert store.keys.keyring.records[old].state == "retired"
        msgs = await store.list_messages("c1", limit=1000)
        assert len(msgs) == 150 and msgs[0].body == "消息 0 message" and msgs[-1].body == "live 29"
        assert (await store.get_contact("p1")).email == "li@example.com"
        assert await store.desk_records("setting") == [("widget.visitor_secret", 1, secret)]
        raw = await store._read(lambda c: c.execute("SELECT DISTINCT key_id FROM chat_messages").fetchall())
        assert [r[0] for r in raw] == [new.key_id]


async def test_device_replay_state_survives_restart(sqlite_cfg, master):
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        rec, key = await store.keys.new_device("dev-1")
        envs = [seal_envelope(key, rec.key_id, DIR_TO_KEFU, c, "dev-1", "d/dev-1/up", b"t=%d" % c) for c in (1, 2, 3)]
        for env in envs:
            opened = await store.keys.open_from_device("dev-1", "d/dev-1/up", env)
            await store.persist_publish(StoredMessage("d/dev-1/up", opened.payload, sender="dev-1"),
                                        replay=(opened.key_id, opened.counter))
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        for env in envs:  # a captured envelope replayed after a restart is still refused
            with pytest.raises(ReplayDetected):
                await store.keys.open_from_device("dev-1", "d/dev-1/up", env)
        env4 = seal_envelope(key, rec.key_id, DIR_TO_KEFU, 4, "dev-1", "d/dev-1/up", b"t=4")
        assert (await store.keys.open_from_device("dev-1", "d/dev-1/up", env4)).payload == b"t=4"


async def test_egress_counters_never_reused_across_restarts(sqlite_cfg, master):
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        await store.keys.new_device("dev-1")
        first = [parse_envelope(await store.keys.seal_for_device("dev-1", "d/dev-1/down", b"x")).counter
                 for _ in range(3)]
    assert first == [1, 2, 3]
    async with open_store(sqlite_cfg, master=master, background=False) as store:  # as after a crash
        nxt = parse_envelope(await store.keys.seal_for_device("dev-1", "d/dev-1/down", b"x")).counter
    assert nxt > 3


async def test_changes_by_another_process_reach_a_running_node(sqlite_cfg, master):
    async with open_store(sqlite_cfg, master=master, background=False) as running, \
            open_store(sqlite_cfg, master=master, background=False) as cli:
        rec, key = await cli.keys.new_device("dev-7")  # provisioned while kefu runs
        env = seal_envelope(key, rec.key_id, DIR_TO_KEFU, 1, "dev-7", "d/dev-7/up", b"hi")
        assert (await running.keys.open_from_device("dev-7", "d/dev-7/up", env)).payload == b"hi"
        await cli.keys.revoke(rec.key_id)
        await running.keys.refresh()  # what the background task does every refresh_s
        env2 = seal_envelope(key, rec.key_id, DIR_TO_KEFU, 2, "dev-7", "d/dev-7/up", b"hi")
        with pytest.raises(RevokedKey):
            await running.keys.open_from_device("dev-7", "d/dev-7/up", env2)


async def test_wrong_master_key_refuses_to_open(sqlite_cfg, master):
    async with open_store(sqlite_cfg, master=master, background=False):
        pass
    with pytest.raises(KeyringError, match="wrong master key"):
        async with open_store(sqlite_cfg, master=MasterKey(os.urandom(16), "other"), background=False):
            pass


async def test_data_key_in_use_cannot_be_revoked(sqlite_cfg, master):
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        await store.append_message(ChatMessage("c", "customer", "secret"))
        with pytest.raises(ValueError, match="rotate"):
            await store.keys.revoke(store.keys.keyring.active_data_key)
