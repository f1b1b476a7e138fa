"""MQTT primitive data types and the MQTT 5.0 property table (spec 1.5 and 2.2.2).

Readers work on a buffer (``bytes`` or ``bytearray``) with an explicit ``end``: the
decoder keeps several packets in one buffer, so reading past the current packet must
be caught by a bounds check against ``end``, never by an IndexError (which would only
fire at the end of the whole buffer). Every reader returns ``(value, new_pos)`` and
raises only ``ProtocolError``.

Writers return ``bytes`` and raise ``ValueError`` for values that cannot be put on
the wire (a programming error in the caller, not a peer's fault).
"""

from __future__ import annotations

import struct

from .packets import NO_PROPERTIES, PacketType, Properties, ProtocolError

MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
TOPIC_ALIAS_INVALID = 0x94

MAX_VARINT = 268_435_455  # 4 bytes of 7 bits (spec 1.5.5)

# Wire types of property values (spec 2.2.2.2).
BYTE, U16, U32, VARINT, UTF8, BINARY, PAIR = range(7)
_TYPE_NAMES = ("byte", "two byte integer", "four byte integer", "variable byte integer",
               "UTF-8 string", "binary data", "UTF-8 string pair")

# Will properties live in the CONNECT payload; they have their own allow-list.
WILL = 0

_T = PacketType
_CONNECT, _CONNACK, _PUBLISH = _T.CONNECT, _T.CONNACK, _T.PUBLISH
_ACKS = (_T.PUBACK, _T.PUBREC, _T.PUBREL, _T.PUBCOMP)

# (identifier, Properties attribute, wire type, where it may appear, several allowed)
# Straight from the table in spec 2.2.2.2; "several allowed" per 3.3.2.3.8 / 2.2.2.2.
PROPERTY_TABLE: tuple[tuple[int, str, int, frozenset[int], bool], ...] = (
    (0x01, "payload_format_indicator", BYTE, frozenset({_PUBLISH, WILL}), False),
    (0x02, "message_expiry_interval", U32, frozenset({_PUBLISH, WILL}), False),
    (0x03, "content_type", UTF8, frozenset({_PUBLISH, WILL}), False),
    (0x08, "response_topic", UTF8, frozenset({_PUBLISH, WILL}), False),
    (0x09, "correlation_data", BINARY, frozenset({_PUBLISH, WILL}), False),
    (0x0B, "subscription_identifiers", VARINT, frozenset({_PUBLISH, _T.SUBSCRIBE}), True),
    (0x11, "session_expiry_interval", U32, frozenset({_CONNECT, _CONNACK, _T.DISCONNECT}), False),
    (0x12, "assigned_client_identifier", UTF8, frozenset({_CONNACK}), False),
    (0x13, "server_keep_alive", U16, frozenset({_CONNACK}), False),
    (0x15, "authentication_method", UTF8, frozenset({_CONNECT, _CONNACK, _T.AUTH}), False),
    (0x16, "authentication_data", BINARY, frozenset({_CONNECT, _CONNACK, _T.AUTH}), False),
    (0x17, "request_problem_information", BYTE, frozenset({_CONNECT}), False),
    (0x18, "will_delay_interval", U32, frozenset({WILL}), False),
    (0x19, "request_response_information", BYTE, frozenset({_CONNECT}), False),
    (0x1A, "response_information", UTF8, frozenset({_CONNACK}), False),
    (0x1C, "server_reference", UTF8, frozenset({_CONNACK, _T.DISCONNECT}), False),
    (0x1F, "reason_string", UTF8,
     frozenset({_CONNACK, *_ACKS, _T.SUBACK, _T.UNSUBACK, _T.DISCONNECT, _T.AUTH}), False),
    (0x21, "receive_maximum", U16, frozenset({_CONNECT, _CONNACK}), False),
    (0x22, "topic_alias_maximum", U16, frozenset({_CONNECT, _CONNACK}), False),
    (0x23, "topic_alias", U16, frozenset({_PUBLISH}), False),
    (0x24, "maximum_qos", BYTE, frozenset({_CONNACK}), False),
    (0x25, "retain_available", BYTE, frozenset({_CONNACK}), False),
    (0x26, "user_properties", PAIR, frozenset({
        _CONNECT, _CONNACK, _PUBLISH, WILL, *_ACKS, _T.SUBSCRIBE, _T.SUBACK,
        _T.UNSUBSCRIBE, _T.UNSUBACK, _T.DISCONNECT, _T.AUTH}), True),
    (0x27, "maximum_packet_size", U32, frozenset({_CONNECT, _CONNACK}), False),
    (0x28, "wildcard_subscription_available", BYTE, frozenset({_CONNACK}), False),
    (0x29, "subscription_identifier_available", BYTE, frozenset({_CONNACK}), False),
    (0x2A, "shared_subscription_available", BYTE, frozenset({_CONNACK}), False),
)
_BY_ID = {row[0]: row for row in PROPERTY_TABLE}

# Properties whose value must be 0 or 1, and those where 0 is not allowed.
_BOOLEAN = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_NON_ZERO = frozenset({0x0B, 0x21, 0x23, 0x27})


def _where_name(where: int) -> str:
    return "will properties" if where == WILL else PacketType(where).name


# --------------------------------------------------------------------------- readers

def malformed(message: str) -> ProtocolError:
    return ProtocolError(MALFORMED, f"malformed packet: {message}")


def protocol_error(message: str) -> ProtocolError:
    return ProtocolError(PROTOCOL_ERROR, f"protocol error: {message}")


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """Variable Byte Integer (spec 1.5.5): at most 4 bytes, minimal encoding."""
    if pos >= end:
        raise malformed("truncated variable byte integer")
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    for i in range(1, 4):
        if pos + i >= end:
            raise malformed("truncated variable byte integer")
        b = buf[pos + i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0:  # [MQTT-1.5.5-1] the minimum number of bytes must be used
                raise malformed("variable byte integer not minimally encoded")
            return value, pos + i + 1
        shift += 7
    raise malformed("variable byte integer longer than 4 bytes")


def read_u16(buf, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise malformed("truncated two byte integer")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def read_u32(buf, pos: int, end: int) -> tuple[int, int]:
    if pos + 4 > end:
        raise malformed("truncated four byte integer")
    return struct.unpack_from("!I", buf, pos)[0], pos + 4


def read_binary(buf, pos: int, end: int) -> tuple[bytes, int]:
    """Binary Data (spec 1.5.6): two byte length, then that many bytes."""
    if pos + 2 > end:
        raise malformed("truncated binary data length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise malformed("binary data longer than the packet")
    return bytes(buf[pos + 2:stop]), stop


def decode_utf8(raw) -> str:
    """Check and decode the bytes of a UTF-8 Encoded String (spec 1.5.4)."""
    try:
        # Python's strict UTF-8 codec rejects overlong forms, code points above
        # U+10FFFF and encoded surrogates U+D800..U+DFFF. [MQTT-1.5.4-1]
        s = str(raw, "utf-8")
    except UnicodeDecodeError as e:
        raise malformed(f"ill-formed UTF-8 in string ({e.reason})") from None
    if "\x00" in s:  # [MQTT-1.5.4-2]
        raise malformed("UTF-8 string contains U+0000")
    return s


def read_utf8(buf, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise malformed("truncated string length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise malformed("string longer than the packet")
    return decode_utf8(buf[pos + 2:stop]), stop


def _read_value(buf, pos: int, end: int, wtype: int):
    if wtype == BYTE:
        if pos >= end:
            raise malformed("truncated byte property")
        return buf[pos], pos + 1
    if wtype == U16:
        return read_u16(buf, pos, end)
    if wtype == U32:
        return read_u32(buf, pos, end)
    if wtype == VARINT:
        return read_varint(buf, pos, end)
    if wtype == UTF8:
        return read_utf8(buf, pos, end)
    if wtype == BINARY:
        return read_binary(buf, pos, end)
    name, pos = read_utf8(buf, pos, end)
    value, pos = read_utf8(buf, pos, end)
    return (name, value), pos


def read_properties(buf, pos: int, end: int, where: int) -> tuple[Properties, int]:
    """Property Length + properties (spec 2.2.2). ``where`` is a PacketType or WILL."""
    length, pos = read_varint(buf, pos, end)
    if length == 0:
        return NO_PROPERTIES, pos
    stop = pos + length
    if stop > end:
        raise malformed("property length exceeds the packet")
    if length > _CACHE_MAX_BYTES:
        return _parse_properties(buf, pos, stop, where), stop
    raw = buf[pos:stop]
    if type(raw) is not bytes:
        raw = bytes(raw)
    cache = _DECODED[where]
    props = cache.get(raw)
    if props is None:
        props = _parse_properties(raw, 0, length, where)
        if len(cache) >= _CACHE_ENTRIES:
            cache.clear()
        cache[raw] = props
    return props, stop


# Peers repeat the same few property blocks (a device's content type, expiry, user
# properties), and building a 27-field frozen Properties costs microseconds. Values
# are immutable, so identical bytes can share one decoded value; the caches are small
# and simply cleared when full.
_CACHE_ENTRIES = 512
_CACHE_MAX_BYTES = 256
_DECODED: dict[int, dict[bytes, Properties]] = {w: {} for w in (WILL, *PacketType)}
_ENCODED: dict[tuple[int, int], tuple[Properties, bytes]] = {}


def _parse_properties(buf, pos: int, stop: int, where: int) -> Properties:
    values: dict[str, object] = {}
    while pos < stop:
        pid = buf[pos]
        pos += 1
        row = _BY_ID.get(pid)
        if row is None:  # spec 2.2.2.2: an identifier not valid for the packet is malformed
            raise malformed(f"unknown property identifier 0x{pid:02X}")
        _, attr, wtype, allowed, several = row
        if where not in allowed:
            raise malformed(f"property {attr} (0x{pid:02X}) is not allowed in {_where_name(where)}")
        value, pos = _read_value(buf, pos, stop, wtype)
        if pid in _BOOLEAN and value > 1:
            raise protocol_error(f"{attr} must be 0 or 1, got {value}")
        if pid in _NON_ZERO and value == 0:
            if pid == 0x23:  # [MQTT-3.3.2-8] a Topic Alias of 0 is not permitted
                raise ProtocolError(TOPIC_ALIAS_INVALID, "topic alias 0 is not permitted")
            raise protocol_error(f"{attr} must not be 0")
        if pid == 0x08 and ("+" in value or "#" in value):  # [MQTT-3.3.2-14]
            raise protocol_error(f"wildcard in response topic {value!r}")
        if several:
            if attr in values:
                if pid == 0x0B and where != _PUBLISH:  # spec 3.8.2.1.2: once in SUBSCRIBE
                    raise protocol_error("subscription identifier included more than once")
                values[attr].append(value)  # type: ignore[union-attr]
            else:
                values[attr] = [value]
        elif attr in values:  # spec 2.2.2.2 / each property: "more than once" is a Protocol Error
            raise protocol_error(f"property {attr} (0x{pid:02X}) included more than once")
        else:
            values[attr] = value
    for attr in ("subscription_identifiers", "user_properties"):
        if attr in values:
            values[attr] = tuple(values[attr])  # type: ignore[arg-type]
    return Properties(**values)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- writers

_SMALL_VARINT = tuple(bytes((i,)) for i in range(128))


def encode_varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINT[value]
    if value > MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        digit = value & 0x7F
        value >>= 7
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def encode_u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"two byte integer out of range: {value}")
    return value.to_bytes(2, "big")


def encode_utf8(s: str) -> bytes:
    """UTF-8 Encoded String with its two byte length (spec 1.5.4)."""
    if "\x00" in s:  # [MQTT-1.5.4-2]
        raise ValueError(f"UTF-8 string must not contain U+0000: {s!r}")
    try:
        raw = s.encode("utf-8")  # lone surrogates fail here [MQTT-1.5.4-1]
    except UnicodeEncodeError as e:
        raise ValueError(f"string is not encodable as UTF-8: {s!r}") from e
    if len(raw) > 0xFFFF:
        raise ValueError(f"UTF-8 string longer than 65535 bytes ({len(raw)})")
    return len(raw).to_bytes(2, "big") + raw


def encode_binary(data) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"binary data longer than 65535 bytes ({len(data)})")
    return len(data).to_bytes(2, "big") + bytes(data)


def _encode_value(wtype: int, value) -> bytes:
    try:
        if wtype == BYTE:
            return struct.pack("!B", value)
        if wtype == U16:
            return struct.pack("!H", value)
        if wtype == U32:
            return struct.pack("!I", value)
    except struct.error as e:
        raise ValueError(f"{_TYPE_NAMES[wtype]} out of range: {value!r}") from e
    if wtype == VARINT:
        if value < 0:
            raise ValueError(f"variable byte integer out of range: {value}")
        return encode_varint(value)
    if wtype == UTF8:
        return encode_utf8(value)
    if wtype == BINARY:
        return encode_binary(value)
    name, val = value
    return encode_utf8(name) + encode_utf8(val)


def encode_properties(props: Properties, where: int) -> bytes:
    """Property Length followed by the properties present in ``props``."""
    if props is NO_PROPERTIES:
        return b"\x00"
    key = (id(props), where)
    hit = _ENCODED.get(key)
    if hit is not None and hit[0] is props:  # the entry keeps props alive: ids cannot be reused
        return hit[1]
    data = _encode_properties(props, where)
    if len(data) <= _CACHE_MAX_BYTES:
        if len(_ENCODED) >= _CACHE_ENTRIES:
            _ENCODED.clear()
        _ENCODED[key] = (props, data)
    return data


def _encode_properties(props: Properties, where: int) -> bytes:
    parts = []
    for pid, attr, wtype, allowed, several in PROPERTY_TABLE:
        value = getattr(props, attr)
        if value is None or value == ():
            continue
        if where not in allowed:
            raise ValueError(f"property {attr} is not allowed in {_where_name(where)}")
        ident = _SMALL_VARINT[pid]
        if several:
            for item in value:
                parts.append(ident)
                parts.append(_encode_value(wtype, item))
        else:
            parts.append(ident)
            parts.append(_encode_value(wtype, value))
    body = b"".join(parts)
    return encode_varint(len(body)) + body
