"""Cross-check the codec against paho-mqtt over a real socket, both directions.

A real paho client connects to a scripted peer that uses only our Decoder and
``encode``: every packet paho sends must decode to the values paho was given, and
every packet we send must be understood by paho (its callbacks see our values).
"""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.subscribeoptions import SubscribeOptions

from kefu.broker.mqtt.codec import Decoder, encode
from kefu.broker.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)

PAHO_PROTOCOL = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}
WAIT = 10


class ScriptedPeer:
    """The broker side of one socket, driven step by step by the test."""

    def __init__(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        self.conn = conn
        self.decoder = Decoder(server=True)
        self.queue: list = []

    def expect(self, cls):
        while not self.queue:
            data = self.conn.recv(65536)
            assert data, "paho closed the connection"
            self.decoder.feed(data)
            self.queue.extend(self.decoder)
        packet = self.queue.pop(0)
        assert isinstance(packet, cls), packet
        return packet

    def send(self, packet) -> None:
        self.conn.sendall(encode(packet, self.decoder.version))


def paho_props(packet_type, **values):
    props = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


@pytest.fixture
def listener():
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(WAIT)
    yield srv
    srv.close()


@pytest.mark.parametrize("v", [3, 4, 5])
def test_paho_client_against_our_codec(listener, v):
    v5 = v == 5
    events: dict[str, threading.Event] = {k: threading.Event() for k in ("conn", "sub", "unsub", "msg")}
    seen: dict[str, object] = {"msgs": []}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-1",
                         protocol=PAHO_PROTOCOL[v])

    def on_connect(c, u, flags, rc, props):
        seen["connack"] = (flags.session_present, rc.value, props)
        events["conn"].set()

    def on_subscribe(c, u, mid, codes, props):
        seen["suback"] = [rc.value for rc in codes]
        events["sub"].set()

    def on_unsubscribe(c, u, mid, codes, props):
        events["unsub"].set()

    def on_message(c, u, msg):
        seen["msgs"].append(msg)
        events["msg"].set()

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_unsubscribe, client.on_message = on_unsubscribe, on_message
    client.username_pw_set("agent", "secret")
    will_props = paho_props(PacketTypes.WILLMESSAGE, WillDelayInterval=5) if v5 else None
    client.will_set("dev/1/status", b"offline", qos=1, retain=True, properties=will_props)
    if v5:
        client.connect("127.0.0.1", listener.getsockname()[1], keepalive=30, clean_start=True,
                       properties=paho_props(PacketTypes.CONNECT, SessionExpiryInterval=60,
                                             ReceiveMaximum=20))
    else:
        client.connect("127.0.0.1", listener.getsockname()[1], keepalive=30)
    client.loop_start()
    conn, _ = listener.accept()
    peer = ScriptedPeer(conn)
    try:
        # CONNECT from paho, CONNACK from us.
        c = peer.expect(Connect)
        assert (c.client_id, c.protocol_level, c.keep_alive) == ("paho-1", v, 30)
        assert (c.username, c.password) == ("agent", b"secret")
        assert c.protocol_name == ("MQIsdp" if v == 3 else "MQTT")
        assert (c.will.topic, c.will.payload, c.will.qos, c.will.retain) == \
            ("dev/1/status", b"offline", 1, True)
        if v5:
            assert c.will.properties == Properties(will_delay_interval=5)
            assert c.properties.session_expiry_interval == 60
            assert c.properties.receive_maximum == 20
        peer.send(ConnAck(False, 0, Properties(receive_maximum=10, topic_alias_maximum=0,
                                               assigned_client_identifier="x") if v5 else
                          Properties()))
        assert events["conn"].wait(WAIT)
        assert seen["connack"][:2] == (False, 0)
        if v5:
            assert seen["connack"][2].ReceiveMaximum == 10

        # PUBLISH QoS 0 / 1 / 2 from paho.
        pub_props = paho_props(PacketTypes.PUBLISH, ContentType="text/plain",
                               MessageExpiryInterval=90, ResponseTopic="reply/1",
                               CorrelationData=b"\x01\x02", UserProperty=[("a", "1"), ("b", "2")]) \
            if v5 else None
        client.publish("dev/1/up", b"x" * 64, qos=0, properties=pub_props)
        p = peer.expect(Publish)
        assert (p.topic, p.payload, p.qos, p.retain) == ("dev/1/up", b"x" * 64, 0, False)
        if v5:
            assert p.properties == Properties(content_type="text/plain", message_expiry_interval=90,
                                              response_topic="reply/1", correlation_data=b"\x01\x02",
                                              user_properties=(("a", "1"), ("b", "2")))
        info = client.publish("dev/1/up", b"one", qos=1, retain=True)
        p = peer.expect(Publish)
        assert (p.payload, p.qos, p.retain) == (b"one", 1, True)
        peer.send(PubAck(p.packet_id))
        info.wait_for_publish(WAIT)
        assert info.is_published()
        info = client.publish("dev/1/up", b"two", qos=2)
        p = peer.expect(Publish)
        assert (p.payload, p.qos) == (b"two", 2)
        peer.send(PubRec(p.packet_id))
        assert peer.expect(PubRel).packet_id == p.packet_id
        peer.send(PubComp(p.packet_id))
        info.wait_for_publish(WAIT)
        assert info.is_published()

        # SUBSCRIBE / UNSUBSCRIBE from paho.
        if v5:
            client.subscribe([("f/+", SubscribeOptions(qos=2, noLocal=True, retainAsPublished=True,
                                                       retainHandling=1)),
                              ("g/#", SubscribeOptions(qos=1))])
        else:
            client.subscribe([("f/+", 2), ("g/#", 1)])
        s = peer.expect(Subscribe)
        if v5:
            assert s.subscriptions == (Subscription("f/+", 2, True, True, 1), Subscription("g/#", 1))
        else:
            assert s.subscriptions == (Subscription("f/+", 2), Subscription("g/#", 1))
        peer.send(SubAck(s.packet_id, (2, 0x87)))
        assert events["sub"].wait(WAIT)
        assert seen["suback"] == [2, 0x87 if v5 else 0x80]
        client.unsubscribe(["g/#"])
        u = peer.expect(Unsubscribe)
        assert u.topic_filters == ("g/#",)
        peer.send(UnsubAck(u.packet_id, (0x11,) if v5 else ()))
        assert events["unsub"].wait(WAIT)

        # PUBLISH QoS 1 and 2 from us, acknowledged by paho.
        down_props = Properties(subscription_identifiers=(7,), user_properties=(("k", "v"),),
                                content_type="bin") if v5 else Properties()
        peer.send(Publish("f/x", b"down", 1, packet_id=5, properties=down_props))
        assert peer.expect(PubAck).packet_id == 5
        peer.send(Publish("f/y", b"exactly once", 2, packet_id=6))
        assert peer.expect(PubRec).packet_id == 6
        peer.send(PubRel(6))
        assert peer.expect(PubComp).packet_id == 6
        assert events["msg"].wait(WAIT)
        msgs = seen["msgs"]
        assert [(m.topic, m.payload, m.qos) for m in msgs[:2]] == \
            [("f/x", b"down", 1), ("f/y", b"exactly once", 2)]
        if v5:
            assert msgs[0].properties.SubscriptionIdentifier == [7]
            assert msgs[0].properties.UserProperty == [("k", "v")]
            assert msgs[0].properties.ContentType == "bin"

        client.disconnect()
        assert peer.expect(Disconnect) == Disconnect()
    finally:
        client.loop_stop()
        conn.close()
