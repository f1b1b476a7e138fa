"""MQTT codec: every packet type for 3.1, 3.1.1 and 5.0, framing, validation, encoding."""

from __future__ import annotations

import dataclasses

import pytest
from codec_samples import FULL_PROPS_PUBLISH, examples

from kefu.broker.mqtt.codec import (
    Decoder,
    UnsupportedProtocolVersion,
    decode,
    encode,
    encode_publish,
    publish_template,
    set_dup,
)
from kefu.broker.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    ProtocolError,
    PubAck,
    Publish,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

CASES = [(v, side) for v in (3, 4, 5) for side in ("server", "client")]


def stream_for(v: int, side: str) -> tuple[list, bytes]:
    packets = examples(v, side)
    return packets, b"".join(encode(p, v) for p in packets)


def new_decoder(v: int, side: str) -> Decoder:
    # A server decoder starts before CONNECT (the examples begin with one).
    return Decoder(server=side == "server", version=None if side == "server" else v)


@pytest.mark.parametrize("v,side", CASES)
def test_whole_buffer(v, side):
    packets, data = stream_for(v, side)
    d = new_decoder(v, side)
    d.feed(data)
    assert list(d) == packets
    assert d.pending == 0 and d.next_packet() is None
    if side == "server":
        assert d.version == v


@pytest.mark.parametrize("v,side", CASES)
def test_byte_by_byte(v, side):
    packets, data = stream_for(v, side)
    d = new_decoder(v, side)
    got = []
    for i in range(len(data)):
        d.feed(data[i:i + 1])
        got.extend(d)
    assert got == packets


@pytest.mark.parametrize("v,side", CASES)
def test_trailing_bytes_stay_for_the_next_packet(v, side):
    ping = encode(PingReq() if side == "server" else PingResp(), v)
    for packet in examples(v, side):
        if isinstance(packet, Connect):
            d = Decoder(server=True)
        else:
            d = Decoder(server=side == "server", version=v)
        d.feed(encode(packet, v) + ping[:1])
        assert d.next_packet() == packet
        assert d.pending == 1
        assert d.next_packet() is None
        d.feed(ping[1:])
        assert d.next_packet() == (PingReq() if side == "server" else PingResp())


def test_chunks_of_every_size_split_packets_anywhere():
    packets, data = stream_for(5, "client")
    for size in (2, 3, 7, 64, 1000):
        d = new_decoder(5, "client")
        got = []
        for i in range(0, len(data), size):
            d.feed(memoryview(data)[i:i + size])
            got.extend(d)
        assert got == packets, size


def test_large_publish_in_small_chunks():
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = encode(Publish("big", payload, 1, packet_id=5), 4)
    d = Decoder(server=False, version=4, max_packet_size=2 << 20)
    got = []
    for i in range(0, len(data), 4096):
        d.feed(data[i:i + 4096])
        got.extend(d)
    assert got == [Publish("big", payload, 1, packet_id=5)]


# --------------------------------------------------------------------------- known bytes

KNOWN = [
    # (hex, version, side, packet). Layouts from the spec's examples and tables.
    ("100f00044d5154540402003c0003616263", 4, "server",
     Connect("abc", 4, True, 60)),
    # 5.0 spec 3.1.2.11 example: session expiry interval 10 as a CONNECT property.
    ("10120004 4d515454 05 02 000a 05 11 0000000a 0000", 5, "server",
     Connect("", 5, True, 10, properties=Properties(session_expiry_interval=10))),
    ("100f00064d514973647003 02 003c 0001 61", 3, "server",
     Connect("a", 3, True, 60, protocol_name="MQIsdp")),
    # 3.1.1 spec 3.3.2.3 example: topic "a/b", packet identifier 10.
    ("3207 0003612f62 000a", 4, "server", Publish("a/b", b"", 1, packet_id=10)),
    # spec 1.5.4 example: "A\U0002A6D4" is 00 05 41 F0 AA 9B 94.
    ("3109 0005 41f0aa9b94 6869", 4, "server", Publish("A\U0002A6D4", b"hi", 0, retain=True)),
    ("3b0a 0003612f62 ffff 00 7879", 5, "server",
     Publish("a/b", b"xy", 1, True, True, 0xFFFF)),
    # 3.1.1 spec 3.8.3 example: "a/b" QoS 1 and "c/d" QoS 2, packet identifier 10.
    ("820e 000a 0003612f6201 0003632f6402", 4, "server",
     Subscribe(10, (Subscription("a/b", 1), Subscription("c/d", 2)))),
    # 3.1.1 spec 3.9.3 example: granted 0, granted 2, failure.
    ("9005 000a 000280", 4, "client", SubAck(10, (0, 2, 0x80))),
    ("a20c 000a 0003612f62 0003632f64", 4, "server",
     Unsubscribe(10, ("a/b", "c/d"))),
    ("b002 000a", 4, "client", UnsubAck(10)),
    ("20020100", 4, "client", ConnAck(True, 0)),
    ("20020005", 4, "client", ConnAck(False, 0x87)),
    ("4002 0001", 5, "client", PubAck(1)),
    ("4003 0001 10", 5, "client", PubAck(1, 0x10)),
    ("6203 0001 92", 5, "server", PubRel(1, 0x92)),
    ("c000", 4, "server", PingReq()),
    ("d000", 4, "client", PingResp()),
    ("e000", 4, "server", Disconnect()),
    ("e00104", 5, "server", Disconnect(0x04)),
    ("f000", 5, "server", Auth()),
]


@pytest.mark.parametrize("hexdata,v,side,packet", KNOWN)
def test_known_bytes(hexdata, v, side, packet):
    data = bytes.fromhex(hexdata.replace(" ", ""))
    version = None if isinstance(packet, Connect) else v
    assert decode(data, server=side == "server", version=version) == packet
    assert encode(packet, v) == data


@pytest.mark.parametrize("value,hexdata", [
    (0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"),
    (2097151, "ffff7f"), (2097152, "80808001"), (268435455, "ffffff7f"),
])
def test_remaining_length_boundaries_from_spec_table(value, hexdata):
    """Spec 1.5.5 table: the remaining length of a PUBLISH of each size frames exactly."""
    if value < 5:
        return
    payload = b"\x00" * (value - 5)  # topic "a" (3 bytes) + packet id (2)
    data = encode(Publish("a", payload, 1, packet_id=1), 4)
    assert data[1:1 + len(hexdata) // 2] == bytes.fromhex(hexdata)
    if value <= 16384:  # keep the test fast; framing of bigger ones is the same code
        assert decode(data, version=4) == Publish("a", payload, 1, packet_id=1)


# --------------------------------------------------------------------------- errors

def connect_bytes(flags: int, level: int = 4, name: bytes = b"MQTT", payload: bytes = b"\x00\x01a",
                  props: bytes = b"") -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes((level, flags)) + b"\x00\x3c" + props + payload
    return bytes((0x10, len(body))) + body


ERRORS = [
    # (description / spec id, bytes, server side?, version, expected reason code)
    ("CONNACK sent to a server", "20020000", True, 4, 0x82),
    ("[MQTT-3.1.0-1] first packet not CONNECT", "3005000161 6869", True, None, 0x82),
    ("[MQTT-3.1.0-2] second CONNECT", connect_bytes(0x02).hex(), True, 4, 0x82),
    ("[MQTT-2.1.3-1] PUBREL flags 0000", "60020001", True, 4, 0x81),
    ("[MQTT-2.1.3-1] SUBSCRIBE flags 0000", "8006000100016100", True, 4, 0x81),
    ("[MQTT-2.1.3-1] UNSUBSCRIBE flags 0000", "a00500010001 61", True, 4, 0x81),
    ("[MQTT-2.1.3-1] PINGREQ flags", "c100", True, 4, 0x81),
    ("[MQTT-2.1.3-1] PUBACK flags", "41020001", True, 5, 0x81),
    ("[MQTT-3.3.1-4] PUBLISH QoS 3", "3607000161 0001 00", True, 4, 0x81),
    ("[MQTT-3.3.1-2] DUP on QoS 0", "3805000161 6869", True, 4, 0x81),
    ("[MQTT-2.2.1-3] PUBLISH packet id 0", "3205000161 0000", True, 4, 0x82),
    ("[MQTT-2.2.1-3] PUBACK packet id 0", "40020000", True, 4, 0x82),
    ("[MQTT-2.2.1-3] SUBSCRIBE packet id 0", "82060000000161 00", True, 4, 0x82),
    ("[MQTT-3.3.2-2] '+' in PUBLISH topic", "300500012b6869", True, 4, 0x90),
    ("[MQTT-3.3.2-2] '#' in PUBLISH topic", "30070003612f23 6869", True, 5, 0x90),
    ("[MQTT-4.7.3-1] empty topic in 3.1.1", "300400006869", True, 4, 0x82),
    ("spec 3.3.2.3.4 empty topic without alias", "30050000006869", True, 5, 0x82),
    ("[MQTT-3.3.2-8] topic alias 0", "300700000323000068", True, 5, 0x94),
    ("[MQTT-3.3.4-6] client PUBLISH with subscription id", "300600016102 0b01", True, 5, 0x82),
    ("[MQTT-3.8.3-3] SUBSCRIBE without filters", "82020001", True, 4, 0x82),
    ("[MQTT-3.8.3-3] 5.0 SUBSCRIBE without filters", "8203000100", True, 5, 0x82),
    ("[MQTT-3.10.3-2] UNSUBSCRIBE without filters", "a2020001", True, 4, 0x82),
    ("[MQTT-3-8.3-4] 3.1.1 reserved option bits", "820600010001 6104", True, 4, 0x81),
    ("3.1.1 requested QoS 3", "820600010001 6103", True, 4, 0x81),
    ("[MQTT-3.8.3-5] 5.0 reserved option bits", "82070001000001 6140", True, 5, 0x81),
    ("spec 3.8.3.1 retain handling 3", "82070001000001 6130", True, 5, 0x82),
    ("spec 3.8.3.1 5.0 maximum QoS 3", "82070001000001 6103", True, 5, 0x82),
    ("subscription without options byte", "820500010001 61", True, 4, 0x81),
    ("[MQTT-3.1.2-3] CONNECT reserved flag", connect_bytes(0x03).hex(), True, None, 0x81),
    ("[MQTT-3.1.2-11] will QoS without will flag", connect_bytes(0x0A).hex(), True, None, 0x81),
    ("[MQTT-3.1.2-13] will retain without will flag", connect_bytes(0x22).hex(), True, None, 0x81),
    ("[MQTT-3.1.2-12] will QoS 3", connect_bytes(0x1E, payload=b"\x00\x01a\x00\x01t\x00\x00").hex(),
     True, None, 0x81),
    ("[MQTT-3.1.2-22] 3.1.1 password without username",
     connect_bytes(0x42, payload=b"\x00\x01a\x00\x02pw").hex(), True, None, 0x81),
    ("will topic with wildcard",
     connect_bytes(0x06, payload=b"\x00\x01a\x00\x01#\x00\x00").hex(), True, None, 0x90),
    ("extra bytes after CONNECT", connect_bytes(0x02, payload=b"\x00\x01ab").hex(), True, None, 0x81),
    ("CONNECT payload truncated", connect_bytes(0x02, payload=b"\x00\x05a").hex(), True, None, 0x81),
    ("CONNECT username flag without username", connect_bytes(0x82).hex(), True, None, 0x81),
    ("5.0 receive maximum 0", connect_bytes(0x02, 5, props=b"\x03\x21\x00\x00").hex(), True, None, 0x82),
    ("5.0 request problem information 2", connect_bytes(0x02, 5, props=b"\x02\x17\x02").hex(),
     True, None, 0x82),
    ("5.0 will property in CONNECT properties",
     connect_bytes(0x02, 5, props=b"\x05\x18\x00\x00\x00\x01").hex(), True, None, 0x81),
    ("remaining length of 5 bytes", "30ffffffff01", True, 4, 0x81),
    ("[MQTT-1.5.5-1] non-minimal remaining length", "c08000", True, 4, 0x81),
    ("PINGREQ with a body", "c00100", True, 4, 0x81),
    ("3.1.1 PUBACK with a reason code", "4003000100", True, 4, 0x81),
    ("3.1.1 DISCONNECT with a body", "e00100", True, 4, 0x81),
    ("PUBLISH topic length truncated", "300100", True, 4, 0x81),
    ("PUBLISH topic longer than packet", "30030005 61", True, 4, 0x81),
    ("QoS 1 PUBLISH without packet id", "3203000161", True, 4, 0x81),
    ("[MQTT-1.5.4-1] surrogate in topic", "30050003eda080", True, 4, 0x81),
    ("[MQTT-1.5.4-1] overlong UTF-8 in topic", "30040002c0af", True, 4, 0x81),
    ("[MQTT-1.5.4-2] U+0000 in topic", "30050003610062", True, 4, 0x81),
    ("[MQTT-1.5.4-2] U+0000 in filter", "8206000100010000", True, 4, 0x81),
    ("duplicate message expiry", "300e 000161 0a 0200000001 0200000002", True, 5, 0x82),
    ("session expiry not allowed in PUBLISH", "3009 000161 05 1100000001", True, 5, 0x81),
    ("unknown property 0x05", "3006 000161 02 0500", True, 5, 0x81),
    ("property length beyond packet", "3006 000161 09 0101", True, 5, 0x81),
    ("truncated property value", "3006 000161 02 0200", True, 5, 0x81),
    ("two subscription ids in SUBSCRIBE", "820b0001 04 0b010b02 000161 00", True, 5, 0x82),
    ("subscription id 0", "82090001 02 0b00 000161 00", True, 5, 0x82),
    ("AUTH in 3.1.1", "f000", True, 4, 0x81),
    ("reserved packet type 0", "0000", True, 4, 0x81),
    ("invalid PUBACK reason code", "4003000105", True, 5, 0x82),
    ("invalid PUBREL reason code", "6203000110", True, 5, 0x82),
    ("invalid DISCONNECT reason code", "e0011f", True, 5, 0x82),
    ("invalid AUTH reason code", "f00101", True, 5, 0x82),
    ("extra bytes after DISCONNECT properties", "e0030000 00", True, 5, 0x81),
    # client side
    ("CONNECT sent to a client", connect_bytes(0x02).hex(), False, 4, 0x82),
    ("SUBSCRIBE sent to a client", "820600010001 6100", False, 4, 0x82),
    ("PINGREQ sent to a client", "c000", False, 4, 0x82),
    ("a 3.1.1 server never sends DISCONNECT", "e000", False, 4, 0x82),
    ("[MQTT-3.2.2-1] CONNACK reserved flags", "20020200", False, 4, 0x81),
    ("3.1.1 CONNACK return code 6", "20020006", False, 4, 0x82),
    ("[MQTT-3.2.2-4] session present with failure", "20020105", False, 4, 0x82),
    ("CONNACK too long", "2003000000", False, 4, 0x81),
    ("5.0 CONNACK unknown reason code", "2003000500", False, 5, 0x82),
    ("SUBACK without codes", "90020001", False, 4, 0x82),
    ("3.1.1 SUBACK code 0x87", "9003000187", False, 4, 0x82),
    ("5.0 SUBACK code 0x03", "900400010003", False, 5, 0x82),
    ("3.1.1 UNSUBACK with codes", "b003000100", False, 4, 0x81),
    ("5.0 UNSUBACK without codes", "b003000100", False, 5, 0x82),
    ("[MQTT-3.14.2-2] server DISCONNECT with session expiry", "e007 00 05 1100000001",
     False, 5, 0x82),
    ("CONNACK maximum QoS 2", "20050000022402", False, 5, 0x82),
]


@pytest.mark.parametrize("what,hexdata,server,version,code", ERRORS, ids=[e[0] for e in ERRORS])
def test_rejected_with_reason_code(what, hexdata, server, version, code):
    data = bytes.fromhex(hexdata.replace(" ", ""))
    d = Decoder(server=server, version=version)
    d.feed(data)
    with pytest.raises(ProtocolError) as info:
        d.next_packet()
    assert info.value.reason_code == code, info.value.message
    assert "internal" not in info.value.message
    # The decoder is finished: it keeps reporting the same error.
    with pytest.raises(ProtocolError) as again:
        d.next_packet()
    assert again.value is info.value


def test_errors_in_header_are_reported_before_the_body_arrives():
    d = Decoder(server=True, version=4)
    d.feed(b"\x60")  # PUBREL with reserved flags 0000: no need to wait for more
    with pytest.raises(ProtocolError) as info:
        d.next_packet()
    assert info.value.reason_code == 0x81
    d = Decoder(server=True)
    d.feed(b"\x30")  # PUBLISH before CONNECT
    with pytest.raises(ProtocolError, match="first packet must be CONNECT"):
        d.next_packet()


@pytest.mark.parametrize("name,level", [(b"MQTT", 6), (b"MQTT", 3), (b"MQIsdp", 4), (b"MQTX", 4)])
def test_unsupported_protocol_is_reported_for_a_connack(name, level):
    d = Decoder(server=True)
    d.feed(connect_bytes(0x02, level=level, name=name))
    with pytest.raises(UnsupportedProtocolVersion) as info:
        d.next_packet()
    err = info.value
    assert isinstance(err, ProtocolError) and err.reason_code == 0x84
    assert (err.protocol_name, err.protocol_level) == (name.decode(), level)
    assert d.version is None
    # What the session machine answers with: the 3.1.1 form every client can read.
    assert encode(ConnAck(reason_code=err.reason_code), 4) == bytes.fromhex("20020001")


def test_5_0_password_without_username_is_fine():
    data = connect_bytes(0x42, level=5, props=b"\x00", payload=b"\x00\x01a\x00\x02pw")
    assert decode(data) == Connect("a", 5, True, 60, password=b"pw")


def test_5_0_empty_topic_with_alias_is_fine():
    assert decode(bytes.fromhex("300800000323000168 69"), version=5) == \
        Publish("", b"hi", properties=Properties(topic_alias=1))


# --------------------------------------------------------------------------- maximum packet size

def test_maximum_packet_size_enforced_from_the_fixed_header():
    d = Decoder(server=True, version=4, max_packet_size=100)
    d.feed(b"\x30\xc8\x01")  # remaining length 200: only the header has arrived
    with pytest.raises(ProtocolError) as info:
        d.next_packet()
    assert info.value.reason_code == 0x95


def test_maximum_packet_size_known_from_a_partial_length():
    d = Decoder(server=True, version=4, max_packet_size=1000)
    d.feed(b"\x30\xff\xff")  # at least 2 097 151 bytes, and more length bytes to come
    with pytest.raises(ProtocolError) as info:
        d.next_packet()
    assert info.value.reason_code == 0x95


def test_maximum_packet_size_counts_the_whole_packet():
    exact = encode(Publish("t", b"x" * 95, 0), 4)  # 2 + 3 + 95 = 100 bytes
    assert len(exact) == 100
    d = Decoder(server=True, version=4, max_packet_size=100)
    d.feed(exact)
    assert d.next_packet() == Publish("t", b"x" * 95)
    d = Decoder(server=True, version=4, max_packet_size=99)
    d.feed(exact[:2])
    with pytest.raises(ProtocolError) as info:
        d.next_packet()
    assert info.value.reason_code == 0x95


def test_maximum_packet_size_applies_to_connect():
    d = Decoder(server=True, max_packet_size=64)
    d.feed(encode(Connect("x" * 100), 4)[:3])
    with pytest.raises(ProtocolError) as info:
        d.next_packet()
    assert info.value.reason_code == 0x95


# --------------------------------------------------------------------------- encoding

@pytest.mark.parametrize("rc,code311", [
    (0x00, 0), (0x84, 1), (0x85, 2), (0x88, 3), (0x89, 3), (0x86, 4), (0x87, 5), (0x8C, 5),
    (0x80, 3), (0x8A, 5), (0x9F, 3), (0x95, 5),
])
def test_connack_reason_codes_map_to_3_1_1_return_codes(rc, code311):
    assert encode(ConnAck(True, rc), 4) == bytes((0x20, 2, 1 if rc == 0 else 0, code311))


def test_connack_3_1_has_no_session_present_and_5_0_keeps_the_code():
    assert encode(ConnAck(True, 0), 3) == bytes.fromhex("20020000")
    assert encode(ConnAck(False, 0x8A), 5) == bytes.fromhex("2003008a00")
    assert encode(ConnAck(True, 0x8A), 5) == bytes.fromhex("2003008a00")  # [MQTT-3.2.2-6]


def test_suback_failures_become_0x80_in_3_1_1():
    data = encode(SubAck(3, (0, 0x87, 2, 0x8F, 0xA2)), 4)
    assert data == bytes.fromhex("9007 0003 00 80 02 80 80".replace(" ", ""))


def test_3_1_1_drops_5_0_only_fields():
    p = Publish("a", b"x", 1, packet_id=3, properties=FULL_PROPS_PUBLISH)
    assert encode(p, 4) == encode(dataclasses.replace(p, properties=NO_PROPERTIES), 4)
    assert encode(PubAck(3, 0x10, Properties(reason_string="r")), 4) == bytes.fromhex("40020003")
    assert encode(Disconnect(0x8E), 4) == b"\xe0\x00"
    assert encode(UnsubAck(4, (0x11,)), 4) == bytes.fromhex("b0020004")
    sub = Subscribe(1, (Subscription("f", 1, True, True, 2),), Properties(subscription_identifiers=(3,)))
    assert decode(encode(sub, 4), version=4) == Subscribe(1, (Subscription("f", 1),))
    c = Connect("c", 4, will=Will("w", b"", 0, False, Properties(will_delay_interval=5)),
                properties=Properties(session_expiry_interval=9))
    assert decode(encode(c, 4)) == Connect("c", 4, will=Will("w"))


@pytest.mark.parametrize("bad", [
    Publish("a", b"", 3),
    Publish("a", b"", 1),  # no packet id
    Publish("a", b"", 1, packet_id=0),
    Publish("a", b"", 1, packet_id=70000),
    Publish("a/#", b""),
    Publish("", b""),
    Publish("a", b"", 0, dup=True),
    Publish("a\x00", b""),
    Publish("a", b"", properties=Properties(session_expiry_interval=1)),
    Subscribe(1, ()),
    SubAck(1, ()),
    UnsubAck(1, ()),
    Connect("c", will=Will("w", qos=3)),
])
def test_encoding_invalid_packets_is_a_value_error(bad):
    with pytest.raises(ValueError):
        encode(bad, 5)


def test_auth_and_password_without_username_cannot_be_encoded_for_3_1_1():
    with pytest.raises(ValueError):
        encode(Auth(), 4)
    with pytest.raises(ValueError):
        encode(Connect("c", password=b"p"), 4)
    with pytest.raises(TypeError):
        encode(object(), 4)


@pytest.mark.parametrize("v", [3, 4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_template_splices_packet_ids(v, qos):
    props = FULL_PROPS_PUBLISH if v == 5 else NO_PROPERTIES
    for payload in (b"", b"x" * 64, b"y" * 300):
        p = Publish("room/1/msg", payload, qos, retain=True, properties=props)
        prefix, suffix = publish_template(p, v)
        if qos == 0:
            assert suffix == b"" and prefix == encode(p, v)
            continue
        for pid in (1, 258, 0xFFFF):
            data = prefix + pid.to_bytes(2, "big") + suffix
            expected = dataclasses.replace(p, packet_id=pid)
            assert data == encode(expected, v)
            assert decode(data, server=False, version=v) == expected


def test_encode_publish_matches_encode_and_set_dup():
    data = encode_publish("a/b", b"payload", 5, 1, 9, retain=True)
    assert data == encode(Publish("a/b", b"payload", 1, retain=True, packet_id=9), 5)
    dup = set_dup(data)
    assert decode(dup, version=5) == Publish("a/b", b"payload", 1, True, True, 9)
    with pytest.raises(ValueError):
        set_dup(encode_publish("a/b", b"", 4))


def test_payload_may_be_any_bytes_like():
    data = encode_publish("t", memoryview(b"abc"), 4)
    assert decode(data, version=4).payload == b"abc"


def test_connect_level_is_known_even_when_the_connect_is_broken():
    """So a broken 5.0 CONNECT can still be answered with a 5.0 CONNACK."""
    d = Decoder(server=True)
    d.feed(connect_bytes(0x03, level=5, props=b"\x00"))
    with pytest.raises(ProtocolError):
        d.next_packet()
    assert (d.connect_level, d.version) == (5, None)


def test_each_connection_gets_its_own_error_object():
    """Errors hold tracebacks (and frames): one connection's must never leak into another's."""
    errors = []
    for _ in range(2):
        d = Decoder(server=True)
        d.feed(b"\x30")
        with pytest.raises(ProtocolError) as info:
            d.next_packet()
        errors.append(info.value)
    assert errors[0] is not errors[1]
