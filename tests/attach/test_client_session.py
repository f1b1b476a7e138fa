"""The attach-mode client: ``kefu.broker.client.ClientSession`` (sans-I/O) against the
broker's own codec, and ``kefu.attach.ExternalLink`` against a scripted broker on a real
socket: PUBACK only once the desk is done, in arrival order; a DUP of a message already
handled is not handled again; unacknowledged replies are sent again after a reconnect;
a broker that refuses MQTT 5.0 gets 3.1.1."""

from __future__ import annotations

import functools

import trio
import trio.testing

from kefu.broker.client import MQTT_3_1_1, MQTT_5, ClientSession, Connected
from kefu.broker.mqtt.codec import Decoder, encode
from kefu.broker.mqtt.packets import ConnAck, Connect, PubAck, Publish, Subscribe, SubAck
from kefu.config import from_dict


def server_decode(data: bytes, version: int) -> list:
    d = Decoder(server=True, version=version)
    d.feed(data)
    return list(d)


def started(version=MQTT_5) -> ClientSession:
    s = ClientSession("kefu-a", version=version)
    d = Decoder(server=True)
    d.feed(s.connect_packet())
    connect = next(d)
    assert connect.protocol_level == version and connect.clean_start is False
    if version == MQTT_5:
        assert connect.properties.session_expiry_interval == 3600
    events, _ = s.receive(encode(ConnAck(), version))
    assert isinstance(events[0], Connected)
    return s


def test_pubacks_leave_in_arrival_order_and_only_when_done():
    s = started()
    events, out = s.receive(b"".join(encode(Publish(f"kefu/c/d{i}/main/in", b"x", 1, packet_id=i + 1), MQTT_5)
                                     for i in range(3)))
    assert [e.packet_id for e in events] == [1, 2, 3] and out == b""
    assert s.puback(2, s.generation) == b""  # 1 is not done yet: 2 waits behind it
    acks = server_decode(s.puback(1, s.generation), MQTT_5)
    assert [a.packet_id for a in acks] == [1, 2]
    assert s.puback(3, s.generation - 1) == b""  # from an older connection: ignored
    assert [a.packet_id for a in server_decode(s.puback(3, s.generation), MQTT_5)] == [3]


def test_a_dup_of_a_handled_message_is_recognised_after_a_reconnect():
    s = started()
    s.receive(encode(Publish("kefu/c/d/main/in", b"hello", 1, packet_id=7), MQTT_5))
    s.puback(7, s.generation)  # written, but the connection drops before the broker reads it
    s.receive(encode(Publish("kefu/c/d/main/in", b"other", 1, packet_id=8), MQTT_5))  # never done
    s.lost()
    s.connect_packet()
    events, _ = s.receive(encode(ConnAck(session_present=True), MQTT_5))
    again = encode(Publish("kefu/c/d/main/in", b"hello", 1, dup=True, packet_id=7), MQTT_5)
    retry = encode(Publish("kefu/c/d/main/in", b"other", 1, dup=True, packet_id=8), MQTT_5)
    events, out = s.receive(again + retry)
    assert [(e.packet_id, e.redelivered_done) for e in events] == [(7, True), (8, False)]
    assert [a.packet_id for a in server_decode(out, MQTT_5)] == [7]  # acknowledged at once, not handled
    # a new message under a reused id (no DUP) is a new message
    events, _ = s.receive(encode(Publish("kefu/c/d/main/in", b"hello", 1, packet_id=7), MQTT_5))
    assert not events[0].redelivered_done


def test_unacknowledged_replies_are_sent_again_with_dup_after_a_reconnect():
    s = ClientSession("kefu-a", version=MQTT_3_1_1)
    s.connect_packet()
    assert s.publish("kefu/c/d/main/out", b"queued while away") == b""
    _, out = s.receive(encode(ConnAck(), MQTT_3_1_1))
    (first,) = server_decode(out, MQTT_3_1_1)
    assert first.topic == "kefu/c/d/main/out" and not first.dup
    s.lost()
    s.connect_packet()
    _, out = s.receive(encode(ConnAck(session_present=True), MQTT_3_1_1))
    (again,) = server_decode(out, MQTT_3_1_1)
    assert again.dup and again.packet_id == first.packet_id and again.payload == b"queued while away"
    s.receive(encode(PubAck(first.packet_id), MQTT_3_1_1))
    assert s.outbound_pending == 0


def external_cfg(port: int):
    return from_dict({"broker": {"mode": "external", "host": "127.0.0.1", "port": port, "client_id": "kefu-t",
                                 "reconnect_min": 0.05, "reconnect_max": 0.1}}).broker


class ScriptedBroker:
    """Speaks just enough MQTT to drive ExternalLink: refuses 5.0 the 3.1.1 way, then serves."""

    def __init__(self) -> None:
        self.connects: list[Connect] = []
        self.acks: list[int] = []
        self.got_ack = trio.Event()
        self.subscribed = trio.Event()

    async def handle(self, stream) -> None:
        d = Decoder(server=True)
        version = None
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            d.feed(data)
            for p in d:
                if isinstance(p, Connect):
                    self.connects.append(p)
                    version = p.protocol_level
                    if version == MQTT_5:  # an old broker: "unacceptable protocol version", 3.1.1 bytes
                        await stream.send_all(bytes((0x20, 2, 0, 1)))
                        await stream.aclose()
                        return
                    await stream.send_all(encode(ConnAck(), version))
                elif isinstance(p, Subscribe):
                    self.filters = [s.topic_filter for s in p.subscriptions]
                    await stream.send_all(encode(SubAck(p.packet_id, tuple(1 for _ in p.subscriptions)), version))
                    await stream.send_all(encode(Publish("kefu/c/d1/main/in", b"hi", 1, packet_id=5), version))
                    self.subscribed.set()
                elif isinstance(p, PubAck):
                    self.acks.append(p.packet_id)
                    self.got_ack.set()


async def test_external_link_falls_back_to_311_and_acks_only_after_the_desk_is_done():
    from kefu.attach import ExternalLink

    fake = ScriptedBroker()
    handed: list = []
    desk_done, got = trio.Event(), trio.Event()

    async def handler(topic, payload, done):
        handed.append((topic, payload))
        got.set()

        async def commit():
            await desk_done.wait()
            done(None)

        nursery.start_soon(commit)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        link = ExternalLink(external_cfg(port), ["kefu/c/+/+/in"], handler)
        await nursery.start(link.run)
        with trio.fail_after(10):
            await fake.subscribed.wait()
            await got.wait()
        assert [c.protocol_level for c in fake.connects] == [MQTT_5, MQTT_3_1_1]
        assert fake.connects[1].clean_start is False  # persistent session on 3.1.1 too
        assert fake.filters == ["$share/kefu/kefu/c/+/+/in"]
        assert handed == [("kefu/c/d1/main/in", b"hi")]
        await trio.testing.wait_all_tasks_blocked()
        assert fake.acks == [] and link.ready  # not acknowledged while the desk has not committed
        desk_done.set()
        with trio.fail_after(10):
            await fake.got_ack.wait()
        assert fake.acks == [5]
        nursery.cancel_scope.cancel()


class StorageDown(Exception):
    pass


async def test_a_message_the_desk_could_not_commit_is_not_acknowledged_and_comes_again():
    from kefu.attach import ExternalLink

    fake = ScriptedBroker()
    outcomes = [StorageDown("database is locked"), None]  # first try fails, the redelivery commits
    tries: list[int] = []
    second = trio.Event()

    async def handler(topic, payload, done):
        tries.append(len(fake.connects))
        done(outcomes[len(tries) - 1])
        if len(tries) == 2:
            second.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        cfg = from_dict({"broker": {"mode": "external", "host": "127.0.0.1", "port": port, "protocol": "3.1.1",
                                    "client_id": "kefu-t", "reconnect_min": 0.05, "reconnect_max": 0.1}}).broker
        link = ExternalLink(cfg, ["kefu/c/+/+/in"], handler, is_storage_error=lambda e: isinstance(e, StorageDown))
        await nursery.start(link.run)
        with trio.fail_after(10):
            await second.wait()
            await fake.got_ack.wait()
        assert tries == [1, 2]  # handled again on the next connection, not acknowledged on the first
        assert fake.acks == [5]  # one PUBACK in all: after the commit that succeeded
        nursery.cancel_scope.cancel()
