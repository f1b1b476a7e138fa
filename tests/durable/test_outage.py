"""The database goes away under the broker: acknowledgements are held (never sent for
what is not stored), a long outage closes the held connections so their clients resend,
the waiting messages are bounded, and everything recovers when the database returns.

SQLite: the write lock held by another connection (as another process would). PostgreSQL:
the server disappears behind a TCP proxy the test stops and restarts."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import psycopg
import trio
from durable_harness import Peer, Proxy, broker_cfg, durable_broker

from kefu.broker.mqtt.packets import MQTT_5, Disconnect, PubAck, Publish

V5 = MQTT_5


def payloads(packets) -> list[bytes]:
    return [p.payload for p in packets if isinstance(p, Publish)]


async def test_short_lock_only_delays_the_acknowledgement(sqlite_storage):
    cfg = broker_cfg(replace(sqlite_storage, sqlite_busy_timeout_ms=50, commit_timeout=60.0))
    async with durable_broker(cfg) as (broker, store):
        pub = Peer(broker.router, V5)
        pub.connect("pub")
        blocker = sqlite3.connect(cfg.storage.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        assert pub.publish("t/1", qos=1, pid=1) == []
        await store.wait_ready(False)
        assert "locked" in store.health().reason
        assert pub.received() == [] and not pub.closed  # held, not refused
        blocker.execute("COMMIT")
        await broker.persister.flush()
        assert pub.received() == [PubAck(1, 0x10)]
        assert store.health().ready
        blocker.close()


async def test_long_outage_closes_held_connections_without_acknowledging(sqlite_storage):
    cfg = broker_cfg(replace(sqlite_storage, sqlite_busy_timeout_ms=20, commit_timeout=0.5))
    async with durable_broker(cfg) as (broker, store):
        r, p = broker.router, broker.persister
        v5, v3 = Peer(r, V5), Peer(r)
        v5.connect("pub5")
        v3.connect("pub3")
        blocker = sqlite3.connect(cfg.storage.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        assert v5.publish("t/1", b"a", qos=1, pid=1) == []
        assert v3.publish("t/1", b"b", qos=1, pid=1) == []
        await p.flush()  # the batch fails after storage.commit_timeout
        assert v5.received() == [Disconnect(0x89)] and v5.closed  # server busy: send it again later
        assert v3.received() == [] and v3.closed  # 3.1.1 cannot be told: closed, nothing acknowledged
        assert p.failed == 2
        blocker.execute("COMMIT")
        await store.wait_ready(True)
        again = Peer(r, V5)
        again.connect("pub5")
        again.publish("t/1", b"a", qos=1, pid=1)
        await p.flush()
        assert again.received() == [PubAck(1, 0x10)]
        blocker.close()


async def test_waiting_messages_are_bounded_while_the_database_is_away(sqlite_storage):
    cfg = broker_cfg(replace(sqlite_storage, sqlite_busy_timeout_ms=20, commit_timeout=60.0, max_pending=2))
    async with durable_broker(cfg) as (broker, store):
        r, p = broker.router, broker.persister
        live = Peer(r)
        live.connect("live")
        live.subscribe("t/#", qos=1)
        a, b, c = Peer(r), Peer(r), Peer(r)
        for peer, cid in ((a, "a"), (b, "b"), (c, "c")):
            peer.connect(cid)
        blocker = sqlite3.connect(cfg.storage.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        a.publish("t/a", b"a", qos=1, pid=1)
        await store.wait_ready(False)
        b.publish("t/b", b"b", qos=1, pid=1)
        assert c.publish("t/c", b"c", qos=1, pid=1) == [] and c.closed  # over the bound: refused unrouted
        assert payloads(live.received()) == [b"a", b"b"]
        assert p.refused == 1
        blocker.execute("COMMIT")
        await p.flush()
        assert a.received() == [PubAck(1)] and b.received() == [PubAck(1)]
        assert await store.count_messages() == 2
        blocker.close()


async def test_postgres_goes_away_and_returns(postgres_dsn, tmp_path):
    import uuid

    from durable_harness import drop_schema
    from kefu.config.model import Storage

    schema = "kefu_durable_" + uuid.uuid4().hex[:10]
    try:
        async with trio.open_nursery() as nursery:
            target = psycopg.conninfo.conninfo_to_dict(postgres_dsn)
            proxy = Proxy(int(target.get("port", 5432)))
            await proxy.start(nursery)
            dsn = psycopg.conninfo.make_conninfo(postgres_dsn, host="127.0.0.1", port=proxy.port)
            cfg = broker_cfg(Storage(backend="postgres", dsn=dsn, pg_schema=schema, commit_timeout=60.0))
            async with durable_broker(cfg) as (broker, store):
                sub = Peer(broker.router, V5)
                sub.connect("sub", clean=False, expiry=3600)
                sub.subscribe("t/#", qos=1)
                sub.drop()
                pub = Peer(broker.router, V5)
                pub.connect("pub")
                pub.publish("t/1", b"before", qos=1, pid=1)
                await broker.persister.flush()
                assert pub.received() == [PubAck(1)]
                proxy.stop()  # the server is gone
                assert pub.publish("t/1", b"during", qos=1, pid=2) == []
                await store.wait_ready(False)
                assert store.health().reason.startswith("postgres:")
                assert pub.received() == [] and not pub.closed
                await proxy.start(nursery)  # back, same address
                await broker.persister.flush()
                assert pub.received() == [PubAck(2)]
                assert [q.message.payload for q in await store.load_queue("sub")] == [b"before", b"during"]
            proxy.stop()
    finally:
        drop_schema(postgres_dsn, schema)
