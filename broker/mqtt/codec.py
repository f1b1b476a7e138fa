"""Sans-I/O MQTT codec for 3.1, 3.1.1 and 5.0: bytes in, packets out, and back.

Decoder
    Bytes go in with ``feed``; ``next_packet`` returns one packet or ``None`` when
    more bytes are needed. The buffer is ``bytes`` while whole packets arrive (the
    common case: no copy on feed, one copy of a payload when it is sliced out) and
    switches to a ``bytearray`` only while a packet is split across feeds.

    The first byte is checked against a 256-entry table built per state (server or
    client, protocol version, CONNECT seen or not), so packet type, direction and
    reserved flags are rejected before the remaining length has even arrived, and a
    remaining length over the maximum packet size is rejected before the body is
    buffered (spec 3.2.2.3.6: 0x95 Packet too large).

    All errors are ``ProtocolError`` with the reason code a 5.0 peer should be given;
    after one, the decoder keeps raising it (the connection is finished).

Encoder
    ``encode(packet, version)`` for everything, ``encode_publish`` and
    ``publish_template`` for the publish hot path (see publish_template).

Which rules live here: everything that is a property of one packet's bytes. Rules
that need session state (topic alias mapping, receive maximum, packet ids in use,
topic filter syntax, authentication flow) belong to the session machine.
"""

from __future__ import annotations

from .packets import (
    MQTT_5,
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    ProtocolError,
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
    Will,
)
from .properties import (
    MALFORMED,
    PROTOCOL_ERROR,
    WILL,
    decode_utf8,
    malformed,
    protocol_error,
    read_binary,
    read_properties,
    read_u16,
    read_utf8,
)
from .encoder import encode, encode_publish, publish_template, set_dup  # noqa: F401 (re-export)

__all__ = [
    "Decoder", "decode", "encode", "encode_publish", "publish_template", "set_dup",
    "UnsupportedProtocolVersion", "DEFAULT_MAX_PACKET_SIZE", "MALFORMED", "PROTOCOL_ERROR",
]

DEFAULT_MAX_PACKET_SIZE = 1 << 20
TOPIC_NAME_INVALID = 0x90
PACKET_TOO_LARGE = 0x95


class UnsupportedProtocolVersion(ProtocolError):
    """CONNECT named a protocol name/level this server does not speak.

    The session machine should answer with a CONNACK before closing
    [MQTT-3.1.2-2]: ``encode(ConnAck(reason_code=0x84), 4)`` gives the 3.1.1 form
    (return code 0x01), which every client version can parse.
    """

    def __init__(self, protocol_name: str, protocol_level: int, message: str) -> None:
        super().__init__(0x84, message)
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level


_PROTOCOLS = {("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)}

# Reason codes each 5.0 packet may carry (spec 3.x.2.1 tables).
_CONNACK_CODES = frozenset({0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
                            0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F})
_PUB_CODES = frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99})
_REL_CODES = frozenset({0x00, 0x92})
_ACK_CODES = {4: _PUB_CODES, 5: _PUB_CODES, 6: _REL_CODES, 7: _REL_CODES}
_SUBACK_CODES = frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2})
_SUBACK_CODES_V3 = frozenset({0x00, 0x01, 0x02, 0x80})
_UNSUBACK_CODES = frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91})
_DISCONNECT_CODES = frozenset({0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E,
                               0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B,
                               0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2})
_AUTH_CODES = frozenset({0x00, 0x18, 0x19})
# 3.1.1 CONNACK return codes -> 5.0 reason codes (the contract carries 5.0 codes).
_V3_CONNACK = (0x00, 0x84, 0x85, 0x88, 0x86, 0x87)

_SERVER_RECEIVES = frozenset({1, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15})
_CLIENT_RECEIVES = frozenset({2, 3, 4, 5, 6, 7, 9, 11, 13, 14, 15})
# Required low nibble for everything but PUBLISH [MQTT-2.1.3-1].
_FLAGS = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0, 15: 0}


def _header_rules(server: bool, version: int | None) -> tuple:
    """For each possible first byte: None if acceptable now, else (reason code, message).

    Messages, not exception objects: a raised exception carries its traceback (and
    through it the frames of the connection that raised it), so it must not be shared.
    """
    table = []
    for b0 in range(256):
        ptype, flags = b0 >> 4, b0 & 0x0F
        name = PacketType(ptype).name if 1 <= ptype <= 15 else str(ptype)
        if ptype == 0 or (ptype == 15 and version is not None and version < MQTT_5):
            err = (MALFORMED, f"malformed packet: reserved packet type {ptype}")
        elif ptype not in (_SERVER_RECEIVES if server else _CLIENT_RECEIVES):
            side = "client" if server else "server"
            err = (PROTOCOL_ERROR, f"protocol error: {name} may not be sent by a {side}")
        elif ptype == 14 and not server and version is not None and version < MQTT_5:
            err = (PROTOCOL_ERROR, "protocol error: a 3.1.1 server never sends DISCONNECT")
        elif server and version is None and ptype != 1:  # [MQTT-3.1.0-1]
            err = (PROTOCOL_ERROR, f"protocol error: first packet must be CONNECT, got {name}")
        elif server and version is not None and ptype == 1:  # [MQTT-3.1.0-2]
            err = (PROTOCOL_ERROR, "protocol error: second CONNECT on one connection")
        elif ptype == 3:
            qos = (flags >> 1) & 3
            if qos == 3:  # [MQTT-3.3.1-4]
                err = (MALFORMED, "malformed packet: PUBLISH with QoS 3")
            elif qos == 0 and flags & 8:  # [MQTT-3.3.1-2]
                err = (MALFORMED, "malformed packet: PUBLISH with DUP set on QoS 0")
            else:
                err = None
        elif flags != _FLAGS[ptype]:  # [MQTT-2.1.3-1]
            err = (MALFORMED, f"malformed packet: reserved flags 0x{flags:X} in {name} fixed header")
        else:
            err = None
        table.append(err)
    return tuple(table)


_RULES = {(s, v): _header_rules(s, v) for s in (True, False) for v in (None, 3, 4, 5)}


class Decoder:
    """Incremental MQTT decoder for one connection.

    ``server=True`` (the broker side): ``version`` is normally left ``None``; the
    first packet must then be CONNECT ([MQTT-3.1.0-1], enforced here) and its
    protocol level becomes ``decoder.version``. Passing a version means the CONNECT
    was already handled elsewhere: a further CONNECT is a protocol error
    [MQTT-3.1.0-2]. ``server=False`` (a client, the bridge): ``version`` is required.

    Packets that only the other side may send are protocol errors. Usage::

        decoder.feed(data)
        for packet in decoder:      # or: while (p := decoder.next_packet()) is not None
            ...
    """

    __slots__ = ("server", "version", "max_packet_size", "connect_level", "_buf", "_pos",
                 "_rules", "_error")

    def __init__(self, *, server: bool = True, version: int | None = None,
                 max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        if version not in (None, 3, 4, 5):
            raise ValueError(f"version must be 3, 4, 5 or None, got {version!r}")
        if not server and version is None:
            raise ValueError("a client-side decoder needs the protocol version it connected with")
        self.server = server
        self.version = version
        self.max_packet_size = max_packet_size
        # Protocol level of a CONNECT whose parsing got that far, even if it then failed:
        # lets the session machine answer a broken 5.0 CONNECT with a 5.0 CONNACK.
        self.connect_level: int | None = None
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._rules = _RULES[(server, version)]
        self._error: ProtocolError | None = None

    # ------------------------------------------------------------------ buffering
    def feed(self, data) -> None:
        """Append received bytes. Call ``next_packet`` until it returns None afterwards."""
        if not data:
            return
        buf = self._buf
        if self._pos >= len(buf):
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(buf) is bytes:  # a packet is split: accumulate in a bytearray
            acc = bytearray(memoryview(buf)[self._pos:])
            acc += data
            self._buf = acc
            self._pos = 0
        else:
            if self._pos:
                del buf[:self._pos]
                self._pos = 0
            buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as packets."""
        return len(self._buf) - self._pos

    def __iter__(self) -> Decoder:
        return self

    def __next__(self) -> Packet:
        packet = self.next_packet()
        if packet is None:
            raise StopIteration
        return packet

    # ------------------------------------------------------------------ framing
    def next_packet(self) -> Packet | None:
        """The next complete packet, or None if more bytes are needed."""
        if self._error is not None:
            raise self._error.with_traceback(None)  # same error, no growing traceback chain
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail <= 0:
            return None
        b0 = buf[pos]
        rule = self._rules[b0]
        if rule is not None:
            return self._fail(ProtocolError(*rule))
        if avail < 2:
            return None
        rl = buf[pos + 1]
        if rl < 0x80:
            total = rl + 2
            start = pos + 2
        else:
            total, hl = self._long_length(buf, pos, avail)
            if total < 0:
                return None
            start = pos + hl
        if total > self.max_packet_size:
            return self._fail(ProtocolError(
                PACKET_TOO_LARGE,
                f"packet of {total} bytes exceeds the maximum packet size {self.max_packet_size}"))
        if total > avail:
            return None
        end = pos + total
        self._pos = end
        try:
            if b0 >> 4 == 3:
                return self._publish(buf, b0, start, end)
            return _DISPATCH[b0 >> 4](self, buf, b0, start, end)
        except ProtocolError as e:
            return self._fail(e)
        except (IndexError, ValueError, OverflowError) as e:  # safety net; tests assert unused
            return self._fail(malformed(f"internal: {type(e).__name__}: {e}"))

    def _fail(self, err: ProtocolError):
        self._error = err
        raise err

    def _long_length(self, buf, pos: int, avail: int) -> tuple[int, int]:
        """(total packet size, header size) from a multi-byte remaining length; (-1, 0) if incomplete."""
        rl = buf[pos + 1] & 0x7F
        mult = 128
        for i in range(2, 5):
            if i >= avail:
                if rl + mult + i > self.max_packet_size:  # already known to be too big
                    self._fail(ProtocolError(PACKET_TOO_LARGE, "packet exceeds the maximum packet size"))
                return -1, 0
            b = buf[pos + i]
            rl += (b & 0x7F) * mult
            if b < 0x80:
                if b == 0:  # [MQTT-1.5.5-1]
                    self._fail(malformed("remaining length not minimally encoded"))
                return rl + i + 1, i + 1
            mult <<= 7
        return self._fail(malformed("remaining length longer than 4 bytes"))

    def _payload(self, buf, p: int, end: int) -> bytes:
        if type(buf) is bytes:
            return buf[p:end]
        with memoryview(buf) as mv:
            return bytes(mv[p:end])

    # ------------------------------------------------------------------ packets
    def _publish(self, buf, b0: int, p: int, end: int) -> Publish:
        # The hot path: kept flat (no helper calls) on purpose.
        if p + 2 > end:
            raise malformed("PUBLISH without topic")
        te = p + 2 + ((buf[p] << 8) | buf[p + 1])
        if te > end:
            raise malformed("PUBLISH topic longer than the packet")
        try:
            topic = str(buf[p + 2:te], "utf-8")  # [MQTT-1.5.4-1] strict: no surrogates
        except UnicodeDecodeError:
            topic = decode_utf8(buf[p + 2:te])  # raises the malformed-packet error
        if "+" in topic or "#" in topic:  # [MQTT-3.3.2-2]
            raise ProtocolError(TOPIC_NAME_INVALID, f"wildcard in PUBLISH topic {topic!r}")
        if "\x00" in topic:  # [MQTT-1.5.4-2]
            raise malformed("UTF-8 string contains U+0000")
        p = te
        qos = (b0 >> 1) & 3
        if qos:
            if p + 2 > end:
                raise malformed("PUBLISH without packet identifier")
            pid = (buf[p] << 8) | buf[p + 1]
            if pid == 0:  # [MQTT-2.2.1-3]
                raise protocol_error("packet identifier 0")
            p += 2
        else:
            pid = None
        if self.version == MQTT_5:
            if p < end and buf[p] == 0:
                props = NO_PROPERTIES
                p += 1
            else:
                props, p = read_properties(buf, p, end, PacketType.PUBLISH)
                if self.server and props.subscription_identifiers:  # [MQTT-3.3.4-6]
                    raise protocol_error("client PUBLISH carries a subscription identifier")
            if not topic and props.topic_alias is None:  # spec 3.3.2.3.4
                raise protocol_error("empty PUBLISH topic without a topic alias")
        else:
            props = NO_PROPERTIES
            if not topic:  # [MQTT-4.7.3-1]
                raise protocol_error("empty PUBLISH topic")
        payload = buf[p:end] if type(buf) is bytes else self._payload(buf, p, end)
        return _new_publish(topic, payload, qos, (b0 & 1) != 0, (b0 & 8) != 0, pid, props)

    def _connect(self, buf, b0: int, p: int, end: int) -> Connect:
        name, p = read_utf8(buf, p, end)
        if p >= end:
            raise malformed("CONNECT without protocol level")
        level = buf[p]
        if (name, level) not in _PROTOCOLS:
            if name not in ("MQTT", "MQIsdp"):  # [MQTT-3.1.2-1]
                raise UnsupportedProtocolVersion(name, level, f"unknown protocol name {name!r}")
            raise UnsupportedProtocolVersion(  # [MQTT-3.1.2-2]
                name, level, f"unsupported protocol level {level} for {name!r}")
        self.connect_level = level
        if p + 4 > end:
            raise malformed("CONNECT variable header truncated")
        flags = buf[p + 1]
        keep_alive = (buf[p + 2] << 8) | buf[p + 3]
        p += 4
        if flags & 0x01:  # [MQTT-3.1.2-3]
            raise malformed("CONNECT reserved flag set")
        has_will = flags & 0x04
        will_qos = (flags >> 3) & 3
        will_retain = bool(flags & 0x20)
        if not has_will and (will_qos or will_retain):  # [MQTT-3.1.2-11] [MQTT-3.1.2-13]
            raise malformed("will QoS/retain set without the will flag")
        if will_qos == 3:  # [MQTT-3.1.2-12]
            raise malformed("will QoS 3")
        has_user, has_pass = flags & 0x80, flags & 0x40
        if level < MQTT_5 and has_pass and not has_user:  # 3.1.1 [MQTT-3.1.2-22]
            raise malformed("password flag without username flag")
        v5 = level == MQTT_5
        props = NO_PROPERTIES
        if v5:
            props, p = read_properties(buf, p, end, PacketType.CONNECT)
        client_id, p = read_utf8(buf, p, end)  # [MQTT-3.1.3-3]
        will = None
        if has_will:
            wprops = NO_PROPERTIES
            if v5:
                wprops, p = read_properties(buf, p, end, WILL)
            wtopic, p = read_utf8(buf, p, end)
            if not wtopic or "+" in wtopic or "#" in wtopic:  # [MQTT-3.1.3-11] a Topic Name
                raise ProtocolError(TOPIC_NAME_INVALID, f"invalid will topic {wtopic!r}")
            wpayload, p = read_binary(buf, p, end)
            will = Will(wtopic, wpayload, will_qos, will_retain, wprops)
        username = password = None
        if has_user:
            username, p = read_utf8(buf, p, end)
        if has_pass:
            password, p = read_binary(buf, p, end)
        if p != end:
            raise malformed("extra bytes after CONNECT payload")
        self.version = level
        self._rules = _RULES[(self.server, level)]
        return Connect(client_id, level, bool(flags & 0x02), keep_alive, username, password,
                       will, props, name)

    def _connack(self, buf, b0: int, p: int, end: int) -> ConnAck:
        if p + 2 > end:
            raise malformed("CONNACK truncated")
        flags, rc = buf[p], buf[p + 1]
        if flags & 0xFE:  # [MQTT-3.2.2-1]
            raise malformed("CONNACK reserved acknowledge flags set")
        session_present = bool(flags)
        if self.version == MQTT_5:
            if rc not in _CONNACK_CODES:
                raise protocol_error(f"invalid CONNACK reason code 0x{rc:02X}")
            props, p = read_properties(buf, p + 2, end, PacketType.CONNACK)
        else:
            if rc >= len(_V3_CONNACK):
                raise protocol_error(f"invalid CONNACK return code {rc}")
            rc = _V3_CONNACK[rc]
            props, p = NO_PROPERTIES, p + 2
        if p != end:
            raise malformed("extra bytes in CONNACK")
        if rc and session_present:  # [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6] (5.0)
            raise protocol_error("session present with a failing CONNACK")
        return ConnAck(session_present, rc, props)

    def _ack(self, buf, b0: int, p: int, end: int):
        ptype = b0 >> 4
        pid, p = read_u16(buf, p, end)
        if pid == 0:  # [MQTT-2.2.1-3]
            raise protocol_error("packet identifier 0")
        rc, props = 0, NO_PROPERTIES
        if self.version == MQTT_5 and p < end:  # spec 3.4.2.1: code/properties may be omitted
            rc = buf[p]
            if rc not in _ACK_CODES[ptype]:
                raise protocol_error(f"invalid {PacketType(ptype).name} reason code 0x{rc:02X}")
            p += 1
            if p < end:
                props, p = read_properties(buf, p, end, ptype)
        if p != end:
            raise malformed(f"extra bytes in {PacketType(ptype).name}")
        return _ACK_CLASSES[ptype](pid, rc, props)

    def _subscribe(self, buf, b0: int, p: int, end: int) -> Subscribe:
        pid, p = read_u16(buf, p, end)
        if pid == 0:  # [MQTT-2.2.1-3]
            raise protocol_error("packet identifier 0")
        v5 = self.version == MQTT_5
        props = NO_PROPERTIES
        if v5:
            props, p = read_properties(buf, p, end, PacketType.SUBSCRIBE)
        subs = []
        while p < end:
            topic_filter, p = read_utf8(buf, p, end)
            if p >= end:
                raise malformed("subscription without options byte")
            opts = buf[p]
            p += 1
            qos = opts & 3
            if v5:
                if opts & 0xC0:  # [MQTT-3.8.3-5]
                    raise malformed("reserved bits set in subscription options")
                if qos == 3:  # spec 3.8.3.1
                    raise protocol_error("subscription with maximum QoS 3")
                retain_handling = (opts >> 4) & 3
                if retain_handling == 3:  # spec 3.8.3.1
                    raise protocol_error("retain handling 3")
                subs.append(Subscription(topic_filter, qos, bool(opts & 4), bool(opts & 8),
                                         retain_handling))
            else:
                if opts & 0xFC or qos == 3:  # 3.1.1 [MQTT-3-8.3-4]
                    raise malformed("reserved bits or QoS 3 in requested QoS byte")
                subs.append(Subscription(topic_filter, qos))
        if not subs:  # [MQTT-3.8.3-3]
            raise protocol_error("SUBSCRIBE without any topic filter")
        return Subscribe(pid, tuple(subs), props)

    def _suback(self, buf, b0: int, p: int, end: int) -> SubAck:
        pid, p = read_u16(buf, p, end)
        v5 = self.version == MQTT_5
        props = NO_PROPERTIES
        if v5:
            props, p = read_properties(buf, p, end, PacketType.SUBACK)
        codes = tuple(buf[p:end])
        if not codes:
            raise protocol_error("SUBACK without reason codes")
        allowed = _SUBACK_CODES if v5 else _SUBACK_CODES_V3
        for rc in codes:
            if rc not in allowed:
                raise protocol_error(f"invalid SUBACK reason code 0x{rc:02X}")
        return SubAck(pid, codes, props)

    def _unsubscribe(self, buf, b0: int, p: int, end: int) -> Unsubscribe:
        pid, p = read_u16(buf, p, end)
        if pid == 0:  # [MQTT-2.2.1-3]
            raise protocol_error("packet identifier 0")
        props = NO_PROPERTIES
        if self.version == MQTT_5:
            props, p = read_properties(buf, p, end, PacketType.UNSUBSCRIBE)
        filters = []
        while p < end:
            topic_filter, p = read_utf8(buf, p, end)
            filters.append(topic_filter)
        if not filters:  # [MQTT-3.10.3-2]
            raise protocol_error("UNSUBSCRIBE without any topic filter")
        return Unsubscribe(pid, tuple(filters), props)

    def _unsuback(self, buf, b0: int, p: int, end: int) -> UnsubAck:
        pid, p = read_u16(buf, p, end)
        if self.version != MQTT_5:
            if p != end:
                raise malformed("extra bytes in UNSUBACK")
            return UnsubAck(pid)
        props, p = read_properties(buf, p, end, PacketType.UNSUBACK)
        codes = tuple(buf[p:end])
        if not codes:
            raise protocol_error("UNSUBACK without reason codes")
        for rc in codes:
            if rc not in _UNSUBACK_CODES:
                raise protocol_error(f"invalid UNSUBACK reason code 0x{rc:02X}")
        return UnsubAck(pid, codes, props)

    def _ping(self, buf, b0: int, p: int, end: int):
        if p != end:
            raise malformed("PINGREQ/PINGRESP with a body")
        return PINGREQ if b0 >> 4 == 12 else PINGRESP

    def _disconnect_or_auth(self, buf, b0: int, p: int, end: int):
        ptype = b0 >> 4
        cls = Disconnect if ptype == 14 else Auth
        if p == end:  # 3.1.1 DISCONNECT, or 5.0 with code 0 and no properties
            return DISCONNECT if ptype == 14 else AUTH_SUCCESS
        if self.version != MQTT_5:
            raise malformed("DISCONNECT with a body")
        rc = buf[p]
        if rc not in (_DISCONNECT_CODES if ptype == 14 else _AUTH_CODES):
            raise protocol_error(f"invalid {cls.__name__.upper()} reason code 0x{rc:02X}")
        props = NO_PROPERTIES
        if p + 1 < end:
            props, p = read_properties(buf, p + 1, end, ptype)
            if p != end:
                raise malformed(f"extra bytes in {cls.__name__.upper()}")
        if ptype == 14 and not self.server and props.session_expiry_interval is not None:
            raise protocol_error("server DISCONNECT carries a session expiry interval")  # [MQTT-3.14.2-2]
        return cls(rc, props)


def _publish_factory():
    """Build Publish values without the frozen dataclass __init__.

    A frozen dataclass sets each field through object.__setattr__; calling the slot
    descriptors directly is about twice as fast, and PUBLISH construction is the largest
    single cost of decoding one. The result is an ordinary, equal, frozen Publish.
    """
    slots = [Publish.__dict__[name].__set__ for name in
             ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")]
    s_topic, s_payload, s_qos, s_retain, s_dup, s_pid, s_props = slots
    new = object.__new__

    def new_publish(topic, payload, qos, retain, dup, packet_id, properties) -> Publish:
        p = new(Publish)
        s_topic(p, topic)
        s_payload(p, payload)
        s_qos(p, qos)
        s_retain(p, retain)
        s_dup(p, dup)
        s_pid(p, packet_id)
        s_props(p, properties)
        return p

    return new_publish


_new_publish = _publish_factory()
PINGREQ, PINGRESP, DISCONNECT, AUTH_SUCCESS = PingReq(), PingResp(), Disconnect(), Auth()
_ACK_CLASSES = {4: PubAck, 5: PubRec, 6: PubRel, 7: PubComp}
_DISPATCH = {
    1: Decoder._connect, 2: Decoder._connack, 3: Decoder._publish, 4: Decoder._ack,
    5: Decoder._ack, 6: Decoder._ack, 7: Decoder._ack, 8: Decoder._subscribe,
    9: Decoder._suback, 10: Decoder._unsubscribe, 11: Decoder._unsuback, 12: Decoder._ping,
    13: Decoder._ping, 14: Decoder._disconnect_or_auth, 15: Decoder._disconnect_or_auth,
}


def decode(data: bytes, *, server: bool = True, version: int | None = None,
           max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> Packet:
    """Decode exactly one packet from ``data`` (tests, conformance tools)."""
    decoder = Decoder(server=server, version=version, max_packet_size=max_packet_size)
    decoder.feed(data)
    packet = decoder.next_packet()
    if packet is None:
        raise malformed(f"incomplete packet ({len(data)} bytes)")
    if decoder.pending:
        raise malformed(f"{decoder.pending} bytes after the packet")
    return packet

