"""Acknowledgement after commit, through the real router, persister and store.

A client's QoS 1/2 PUBLISH is acknowledged only once it is committed, in the order the
PUBLISHes came; QoS 0 and deliveries to connected subscribers never wait for storage.
The clients are sans-I/O (packets in, packets out), so "nothing written yet" is exact.
"""

from __future__ import annotations

from durable_harness import Peer, broker_cfg, durable_broker

from kefu.broker.mqtt.packets import MQTT_5, PubAck, Publish, PubRec

V5 = MQTT_5


async def test_puback_only_after_the_commit_and_what_is_owed_is_stored(sqlite_storage):
    async with durable_broker(broker_cfg(sqlite_storage)) as (broker, store):
        r, p = broker.router, broker.persister
        sub = Peer(r, V5)
        sub.connect("sub", clean=False, expiry=3600)
        sub.subscribe("t/#", qos=1)
        sub.drop()  # offline: what follows is owed to it
        pub = Peer(r)
        pub.connect("pub")
        assert pub.publish("t/1", b"one", qos=1, pid=1) == []  # routed, but not stored yet: no PUBACK
        await p.flush()
        assert pub.received() == [PubAck(1)]
        owed = await store.load_queue("sub")
        assert [(q.message.topic, q.message.payload, q.qos) for q in owed] == [("t/1", b"one", 1)]


async def test_acknowledgements_keep_publish_order_behind_a_held_one(sqlite_storage):
    async with durable_broker(broker_cfg(sqlite_storage)) as (broker, _store):
        r, p = broker.router, broker.persister
        pub = Peer(r, V5)
        pub.connect("pub")
        assert pub.publish("t/1", qos=1, pid=1) == []
        assert pub.publish("$SYS/x", qos=1, pid=2) == []  # refused at once (0x87), but after pid 1
        assert pub.publish("t/3", qos=0) == []
        await p.flush()
        assert pub.received() == [PubAck(1, 0x10), PubAck(2, 0x87)]  # 0x10: nobody subscribed


async def test_qos0_and_connected_subscribers_never_wait_for_storage(sqlite_storage):
    async with durable_broker(broker_cfg(sqlite_storage)) as (broker, _store):
        r, p = broker.router, broker.persister
        live = Peer(r)
        live.connect("live")
        live.subscribe("t/#", qos=1)
        pub = Peer(r)
        pub.connect("pub")
        pub.publish("t/a", b"q1", qos=1, pid=5)
        pub.publish("t/b", b"q0", qos=0)
        got = live.received()  # delivered before anything was committed
        assert [(m.topic, m.payload) for m in got if isinstance(m, Publish)] == [("t/a", b"q1"), ("t/b", b"q0")]
        assert pub.received() == []
        await p.flush()
        assert pub.received() == [PubAck(5)]


async def test_qos2_redelivery_while_held_is_neither_routed_again_nor_acknowledged_early(sqlite_storage):
    async with durable_broker(broker_cfg(sqlite_storage)) as (broker, store):
        r, p = broker.router, broker.persister
        live = Peer(r)
        live.connect("live")
        live.subscribe("t/#", qos=2)
        pub = Peer(r)
        pub.connect("pub")
        assert pub.publish("t/2", b"once", qos=2, pid=7) == []
        assert pub.publish("t/2", b"once", qos=2, pid=7, dup=True) == []
        assert [m.payload for m in live.received() if isinstance(m, Publish)] == [b"once"]
        await p.flush()
        assert pub.received() == [PubRec(7)]
        assert await store.count_messages() == 1


async def test_ack_after_commit_off_acknowledges_at_once_and_still_stores(sqlite_storage):
    from dataclasses import replace

    cfg = broker_cfg(replace(sqlite_storage, ack_after_commit=False))
    async with durable_broker(cfg) as (broker, store):
        pub = Peer(broker.router)
        pub.connect("pub")
        assert pub.publish("t/1", qos=1, pid=1) == [PubAck(1)]
        await broker.persister.flush()
        assert await store.count_messages() == 1


async def test_delivery_acks_update_the_stored_queue(sqlite_storage):
    async with durable_broker(broker_cfg(sqlite_storage)) as (broker, store):
        r, p = broker.router, broker.persister
        sub = Peer(r, V5)
        sub.connect("sub", clean=False, expiry=3600)
        sub.subscribe("t/#", qos=1)
        pub = Peer(r)
        pub.connect("pub")
        for i in range(3):
            pub.publish("t/x", b"%d" % i, qos=1, pid=i + 1)
        sent = [m for m in sub.received() if isinstance(m, Publish)]
        await p.flush()
        owed = await store.load_queue("sub")
        assert [(q.state, q.packet_id) for q in owed] == [("sent", m.packet_id) for m in sent]
        sub.send(PubAck(sent[0].packet_id), PubAck(sent[2].packet_id))
        await p.flush()
        assert [q.message.payload for q in await store.load_queue("sub")] == [b"1"]


async def test_publisher_gone_before_the_commit_still_stores_and_nothing_breaks(sqlite_storage):
    async with durable_broker(broker_cfg(sqlite_storage)) as (broker, store):
        r, p = broker.router, broker.persister
        pub = Peer(r)
        pub.connect("pub")
        assert pub.publish("t/1", b"kept", qos=1, pid=1) == []
        pub.drop()  # the connection breaks while its PUBACK is held
        other = Peer(r)
        other.connect("other")
        other.publish("t/2", b"next", qos=1, pid=1)
        await p.flush()
        assert other.received() == [PubAck(1)]  # 3.1.1: no reason code on the wire
        assert await store.count_messages() == 2 and p.committed == 2
