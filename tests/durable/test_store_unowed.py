"""``storage.store_unowed_messages = false``: a QoS 1 PUBLISH that no persistent session
is owed is acknowledged at once and not stored; one a persistent session is owed, and a
retained one, still wait for their commit, and acknowledgements keep PUBLISH order.
"""

from __future__ import annotations

from dataclasses import replace

from durable_harness import Peer, broker_cfg, durable_broker

from kefu.broker.mqtt.packets import MQTT_5, PubAck, Publish

V5 = MQTT_5


def _cfg(sqlite_storage):
    return broker_cfg(replace(sqlite_storage, store_unowed_messages=False))


async def test_unowed_qos1_is_acknowledged_at_once_and_not_stored(sqlite_storage):
    async with durable_broker(_cfg(sqlite_storage)) as (broker, store):
        r, p = broker.router, broker.persister
        live = Peer(r)
        live.connect("live")  # a clean session: nothing could redeliver to it after a crash
        live.subscribe("t/#", qos=1)
        pub = Peer(r)
        pub.connect("pub")
        assert pub.publish("t/1", b"one", qos=1, pid=1) == [PubAck(1)]
        assert pub.publish("nobody/1", b"two", qos=1, pid=2) == [PubAck(2)]
        assert [m.payload for m in live.received() if isinstance(m, Publish)] == [b"one"]
        await p.flush()
        assert await store.count_messages() == 0 and p.unowed == 2


async def test_owed_and_retained_still_wait_for_the_commit_and_order_holds(sqlite_storage):
    async with durable_broker(_cfg(sqlite_storage)) as (broker, store):
        r, p = broker.router, broker.persister
        sub = Peer(r, V5)
        sub.connect("sub", clean=False, expiry=3600)
        sub.subscribe("owed/#", qos=1)
        sub.drop()
        pub = Peer(r)
        pub.connect("pub")
        assert pub.publish("owed/1", b"a", qos=1, pid=1) == []  # owed to the offline session: held
        assert pub.publish("free/1", b"b", qos=1, pid=2) == []  # not stored, but behind pid 1
        assert pub.publish("ret/1", b"c", qos=1, pid=3, retain=True) == []  # retained: stored
        await p.flush()
        assert pub.received() == [PubAck(1), PubAck(2), PubAck(3)]
        assert await store.count_messages() == 2
        assert [q.message.payload for q in await store.load_queue("sub")] == [b"a"]
