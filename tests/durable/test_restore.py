"""What the broker stored comes back at start: persistent sessions with their
subscriptions, queued and inflight messages (resent with DUP and the same packet id),
inbound QoS 2 ids awaiting PUBREL, and retained messages. On SQLite and PostgreSQL."""

from __future__ import annotations

from durable_harness import Peer, broker_cfg, durable_broker

from kefu.broker.mqtt.packets import (
    MQTT_5, Disconnect, Properties, PubAck, PubComp, Publish, PubRec, PubRel, Unsubscribe,
)


def publishes(packets) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


async def test_sessions_queues_inflight_and_retained_survive_a_restart(storage_cfg):
    cfg = broker_cfg(storage_cfg)
    async with durable_broker(cfg) as (broker, _store):
        r, p = broker.router, broker.persister
        sub = Peer(r, MQTT_5)
        sub.connect("sub", clean=False, expiry=3600)
        sub.subscribe("t/#", qos=1)
        pub = Peer(r, MQTT_5)
        pub.connect("pub", clean=False, expiry=3600)
        pub.publish("t/1", b"inflight", qos=1, pid=1)
        [first] = publishes(sub.received())  # sent, never acknowledged
        sub.drop()
        pub.publish("t/2", b"queued-a", qos=1, pid=2)
        pub.publish("t/3", b"queued-b", qos=2, pid=3)  # PUBREC'd below, PUBREL never sent
        pub.publish("status/pub", b"online", qos=0, retain=True)
        pub.publish("gone/x", b"", qos=0, retain=True)  # an empty retained payload only clears
        await p.flush()
        assert pub.received() == [PubAck(1), PubAck(2), PubRec(3)]
        cleaner = Peer(r, MQTT_5)
        cleaner.connect("short", clean=False, expiry=3600)
        cleaner.subscribe("t/#")
        cleaner.send(Disconnect(0, Properties(session_expiry_interval=0)))  # ends the session now
        await p.flush()

    async with durable_broker(cfg) as (broker, _store):  # a new process, the same database
        r, p = broker.router, broker.persister
        assert set(r.sessions) == {"sub", "pub"}  # "short" ended with its DISCONNECT
        assert r.retained.get("status/pub").payload == b"online"
        sub = Peer(r, MQTT_5)
        assert sub.connect("sub", clean=False, expiry=3600).session_present
        got = publishes(sub.pending + sub.received())
        assert [(m.payload, m.dup) for m in got] == [(b"inflight", True), (b"queued-a", False), (b"queued-b", False)]
        assert got[0].packet_id == first.packet_id
        pub2 = Peer(r, MQTT_5)
        assert pub2.connect("pub", clean=False, expiry=3600).session_present
        # the client did not see PUBREC before the restart and sends the PUBLISH again:
        # exactly once, it is not routed a second time
        assert pub2.publish("t/3", b"queued-b", qos=2, pid=3, dup=True) == [PubRec(3)]
        assert publishes(sub.received()) == []
        assert pub2.send(PubRel(3)) == [PubComp(3)]
        sub.send(*(PubAck(m.packet_id) if m.qos == 1 else PubRec(m.packet_id) for m in got))
        sub.send(PubComp(got[2].packet_id))
        await p.flush()

    async with durable_broker(cfg) as (broker, store):
        sub = Peer(broker.router, MQTT_5)
        assert sub.connect("sub", clean=False, expiry=3600).session_present
        assert publishes(sub.pending + sub.received()) == []  # every delivery was acknowledged
        assert await store.load_queue("sub") == []
        late = Peer(broker.router)
        late.connect("late")
        assert [(m.topic, m.payload, m.retain) for m in publishes(late.subscribe("#", qos=0))] == \
            [("status/pub", b"online", True)]


async def test_subscriptions_changes_and_session_end_are_stored(sqlite_storage):
    cfg = broker_cfg(sqlite_storage)
    async with durable_broker(cfg) as (broker, store):
        r, p = broker.router, broker.persister
        c = Peer(r)  # 3.1.1 clean session false: persistent
        c.connect("dev", clean=False)
        c.subscribe("a/#", qos=1, pid=1)
        c.subscribe("b/#", qos=0, pid=2)
        c.send(Unsubscribe(3, ("a/#",)))
        await p.flush()
        rec = await store.load_session("dev")
        assert [s.topic_filter for s in rec.subscriptions] == ["b/#"] and rec.connected
        c.drop()
        await p.flush()
        rec = await store.load_session("dev")
        assert not rec.connected and rec.disconnected_at is not None
        again = Peer(r)
        again.connect("dev", clean=True)  # clean session: the stored one is discarded
        await p.flush()
        assert await store.load_session("dev") is None
