"""MQTT primitive types and the 5.0 property table."""

from __future__ import annotations

import pytest
from codec_samples import ALLOWED, properties
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kefu.broker.mqtt import properties as P
from kefu.broker.mqtt.packets import NO_PROPERTIES, PacketType, Properties, ProtocolError

WHERES = [P.WILL, *PacketType]


def code_of(fn, *args) -> int:
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value.reason_code


# --------------------------------------------------------------------------- variable byte integer

@pytest.mark.parametrize("value,hexdata", [
    (0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"),
    (2097151, "ffff7f"), (2097152, "80808001"), (268435455, "ffffff7f"),
])
def test_varint_spec_table(value, hexdata):  # spec 1.5.5, table 1-1
    raw = bytes.fromhex(hexdata)
    assert P.encode_varint(value) == raw
    assert P.read_varint(raw + b"\xaa", 0, len(raw) + 1) == (value, len(raw))


@given(st.integers(0, P.MAX_VARINT))
def test_varint_round_trip(value):
    raw = P.encode_varint(value)
    assert P.read_varint(raw, 0, len(raw)) == (value, len(raw))


@pytest.mark.parametrize("hexdata", ["", "80", "ffff", "ffffffff01", "8000", "ff8000"])
def test_varint_malformed(hexdata):
    raw = bytes.fromhex(hexdata)
    assert code_of(P.read_varint, raw, 0, len(raw)) == 0x81


def test_varint_respects_end_not_buffer_length():
    raw = bytes.fromhex("8001")  # complete in the buffer, but the packet ends after 1 byte
    assert code_of(P.read_varint, raw, 0, 1) == 0x81


def test_varint_encode_out_of_range():
    with pytest.raises(ValueError):
        P.encode_varint(P.MAX_VARINT + 1)


# --------------------------------------------------------------------------- strings

def test_utf8_spec_example():  # spec 1.5.4, figure 1-3
    assert P.encode_utf8("A\U0002A6D4") == bytes.fromhex("000541f0aa9b94")
    assert P.read_utf8(bytes.fromhex("000541f0aa9b94"), 0, 7) == ("A\U0002A6D4", 7)


@pytest.mark.parametrize("raw,why", [
    (b"\xed\xa0\x80", "encoded surrogate U+D800 [MQTT-1.5.4-1]"),
    (b"\xed\xbf\xbf", "encoded surrogate U+DFFF [MQTT-1.5.4-1]"),
    (b"\xc0\x80", "overlong U+0000"),
    (b"\xe0\x80\xaf", "overlong '/'"),
    (b"\xf4\x90\x80\x80", "above U+10FFFF"),
    (b"\xff", "invalid byte"),
    (b"a\xc3", "truncated sequence"),
    (b"a\x00b", "U+0000 [MQTT-1.5.4-2]"),
])
def test_utf8_malformed(raw, why):
    data = len(raw).to_bytes(2, "big") + raw
    assert code_of(P.read_utf8, data, 0, len(data)) == 0x81, why


def test_utf8_allows_bom_and_noncharacters():
    # [MQTT-1.5.4-3] a leading U+FEFF must not be stripped; U+FFFF is only "SHOULD NOT".
    s = "\ufeffa\uffff"
    assert P.read_utf8(P.encode_utf8(s), 0, len(P.encode_utf8(s))) == (s, len(P.encode_utf8(s)))


@pytest.mark.parametrize("bad", ["a\x00", "\ud800", "x" * 65536])
def test_utf8_encode_rejects(bad):
    with pytest.raises(ValueError):
        P.encode_utf8(bad)


def test_string_and_binary_lengths_checked_against_end():
    data = bytes.fromhex("0003616263")
    assert code_of(P.read_utf8, data, 0, 4) == 0x81
    assert code_of(P.read_binary, data, 0, 4) == 0x81
    assert code_of(P.read_utf8, data, 0, 1) == 0x81
    assert P.read_binary(data, 0, 5) == (b"abc", 5)


# --------------------------------------------------------------------------- property table

def test_table_matches_the_spec_list():
    table = {attr: set(allowed) for _, attr, _, allowed, _ in P.PROPERTY_TABLE}
    assert table == ALLOWED


def test_table_matches_paho_mqtt():
    """An independent implementation agrees on every id, wire type and packet type."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties as PahoProperties

    paho = PahoProperties(PacketTypes.PUBLISH)
    # paho's type numbers: Byte, Two Byte Int, Four Byte Int, VBI, Binary, UTF-8, pair
    paho_types = {0: P.BYTE, 1: P.U16, 2: P.U32, 3: P.VARINT, 4: P.BINARY, 5: P.UTF8, 6: P.PAIR}
    ours = {pid: (wtype, {P.WILL if w == 0 else int(w) for w in allowed})
            for pid, _, wtype, allowed, _ in P.PROPERTY_TABLE}
    theirs = {pid: (paho_types[t], {P.WILL if w == PacketTypes.WILLMESSAGE else w for w in pts})
              for pid, (t, pts) in paho.properties.items()}
    assert ours == theirs


@pytest.mark.parametrize("where", WHERES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_properties_round_trip(where, data):
    props = data.draw(properties(where, sub_ids=3 if where == PacketType.PUBLISH else 1))
    raw = P.encode_properties(props, where)
    assert P.read_properties(raw, 0, len(raw), where) == (props, len(raw))


@pytest.mark.parametrize("where", [PacketType.PUBLISH, PacketType.CONNECT, P.WILL])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_properties_agree_with_paho(where, data):
    """Bytes paho packs decode to the same values (user properties aside: paho reorders)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties as PahoProperties

    props = data.draw(properties(where, sub_ids=1, exclude=("user_properties",)))
    # paho caps Maximum Packet Size at the largest possible packet; the spec allows any u32.
    assume(props.maximum_packet_size is None or props.maximum_packet_size <= P.MAX_VARINT)
    paho_type = {PacketType.PUBLISH: PacketTypes.PUBLISH, PacketType.CONNECT: PacketTypes.CONNECT,
                 P.WILL: PacketTypes.WILLMESSAGE}[where]
    theirs = PahoProperties(paho_type)
    for pid, attr, _, _, several in P.PROPERTY_TABLE:
        value = getattr(props, attr)
        if value is None or value == ():
            continue
        name = next(n for n, i in theirs.names.items() if i == pid)
        setattr(theirs, name.replace(" ", ""), value[0] if several else value)
    raw = theirs.pack()
    assert P.read_properties(raw, 0, len(raw), where) == (props, len(raw))


def test_empty_properties_are_the_shared_constant():
    assert P.read_properties(b"\x00", 0, 1, PacketType.PUBLISH) == (NO_PROPERTIES, 1)
    assert P.read_properties(b"\x00", 0, 1, PacketType.PUBLISH)[0] is NO_PROPERTIES
    assert P.encode_properties(Properties(), PacketType.PUBLISH) == b"\x00"


def test_several_subscription_ids_and_user_properties_keep_order():
    raw = bytes.fromhex("12 0b01 0b7f 260001610001 62 260001610001 63".replace(" ", ""))
    props, _ = P.read_properties(raw, 0, len(raw), PacketType.PUBLISH)
    assert props.subscription_identifiers == (1, 127)
    assert props.user_properties == (("a", "b"), ("a", "c"))


@pytest.mark.parametrize("where,hexdata,code,why", [
    (PacketType.PUBLISH, "0511 00000001", 0x81, "session expiry not allowed in PUBLISH"),
    (PacketType.CONNECT, "0223 01", 0x81, "topic alias not allowed in CONNECT"),
    (P.WILL, "0511 00000001", 0x81, "session expiry not allowed in will properties"),
    (PacketType.PUBACK, "020000", 0x81, "unknown identifier 0"),
    (PacketType.PUBACK, "02ff01", 0x81, "unknown two-byte identifier"),
    (PacketType.PUBLISH, "0401 0001 01", 0x82, "payload format indicator twice"),
    (PacketType.CONNACK, "04 2401 2401", 0x82, "maximum QoS twice"),
    (PacketType.SUBSCRIBE, "04 0b01 0b02", 0x82, "subscription identifier twice in SUBSCRIBE"),
    (PacketType.PUBLISH, "0201 02", 0x82, "payload format indicator 2"),
    (PacketType.CONNACK, "0225 05", 0x82, "retain available 5"),
    (PacketType.CONNECT, "05 27 00000000", 0x82, "maximum packet size 0"),
    (PacketType.PUBLISH, "03 23 0000", 0x94, "topic alias 0"),
    (P.WILL, "06 08 0003 612f23", 0x82, "[MQTT-3.3.2-14] wildcard in response topic"),
    (PacketType.PUBLISH, "04 03 0003 61", 0x81, "string runs past the property length"),
    (PacketType.PUBLISH, "04 26 0001 61", 0x81, "user property without value"),
    (PacketType.PUBLISH, "06", 0x81, "property length past the end"),
    (PacketType.PUBLISH, "06 0b ffffffff01", 0x81, "subscription identifier of 5 bytes"),
])
def test_property_errors(where, hexdata, code, why):
    raw = bytes.fromhex(hexdata.replace(" ", ""))
    assert code_of(P.read_properties, raw, 0, len(raw), where) == code, why


def test_encoding_a_property_in_the_wrong_packet_is_a_value_error():
    with pytest.raises(ValueError, match="not allowed"):
        P.encode_properties(Properties(topic_alias=1), PacketType.CONNECT)
    with pytest.raises(ValueError):
        P.encode_properties(Properties(receive_maximum=70000), PacketType.CONNECT)


def test_decoded_property_cache_is_per_packet_type_and_bounded():
    raw = bytes.fromhex("03 23 0001".replace(" ", ""))
    assert P.read_properties(raw, 0, 4, PacketType.PUBLISH)[0] == Properties(topic_alias=1)
    # The same bytes, now cached for PUBLISH, are still not allowed in CONNECT.
    assert code_of(P.read_properties, raw, 0, 4, PacketType.CONNECT) == 0x81
    for i in range(1, 2000):
        block = b"\x05\x02" + i.to_bytes(4, "big")
        assert P.read_properties(block, 0, 6, PacketType.PUBLISH)[0].message_expiry_interval == i
    assert all(len(c) <= P._CACHE_ENTRIES for c in P._DECODED.values())


def test_encoded_property_cache_follows_the_object():
    a = Properties(content_type="a")
    assert P.encode_properties(a, PacketType.PUBLISH) == bytes.fromhex("0403000161")
    for i in range(2000):  # churn: ids of dead objects get reused, results must not mix up
        p = Properties(message_expiry_interval=i)
        assert P.encode_properties(p, PacketType.PUBLISH) == b"\x05\x02" + i.to_bytes(4, "big")
    assert len(P._ENCODED) <= P._CACHE_ENTRIES
    with pytest.raises(ValueError):
        P.encode_properties(a, PacketType.CONNECT)
