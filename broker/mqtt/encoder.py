"""Packet -> bytes for MQTT 3.1 (3), 3.1.1 (4) and 5.0 (5).

``encode(packet, version)`` handles every packet. For a 3.x peer it drops what 3.x
cannot carry (properties, reason codes on acks, UNSUBACK codes, 5.0 subscription
options) and maps CONNACK/SUBACK codes to their 3.1.1 forms.

The publish hot path avoids re-encoding per subscriber:

* ``encode_publish`` builds one PUBLISH with an encoded-topic cache and no
  intermediate packet object;
* ``publish_template(publish, version) -> (prefix, suffix)``: for QoS 0 ``prefix``
  is the whole packet (``suffix`` is ``b""``) and can be written to every
  subscriber that gets the same QoS/retain/properties; for QoS 1/2 the packet for
  one subscriber is ``prefix + packet_id.to_bytes(2, "big") + suffix``, so only the
  2-byte packet identifier differs per subscriber.
* ``set_dup(packet_bytes)`` sets the DUP flag on an encoded QoS>0 PUBLISH for a
  redelivery without re-encoding it.

Invalid packets (QoS 3, missing packet id, a property not allowed in that packet,
strings with U+0000 ...) raise ``ValueError``: that is a bug in the caller, not
something a peer did.
"""

from __future__ import annotations

from .packets import (
    MQTT_5,
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PacketType,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from .properties import WILL, encode_binary, encode_properties, encode_u16, encode_utf8, encode_varint

_PUBLISH = PacketType.PUBLISH
_TOPIC_CACHE: dict[str, bytes] = {}
_TOPIC_CACHE_MAX = 8192


def _fixed(b0: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes((b0, n)) + body
    return bytes((b0,)) + encode_varint(n) + body


def _pid(packet_id) -> bytes:
    if type(packet_id) is not int or not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet identifier must be 1..65535, got {packet_id!r}")
    return packet_id.to_bytes(2, "big")


def _topic(topic: str, version: int, properties: Properties) -> bytes:
    t = _TOPIC_CACHE.get(topic)
    if t is None:
        if "+" in topic or "#" in topic:  # [MQTT-3.3.2-2]
            raise ValueError(f"wildcard in PUBLISH topic {topic!r}")
        t = encode_utf8(topic)
        if len(_TOPIC_CACHE) >= _TOPIC_CACHE_MAX:
            _TOPIC_CACHE.clear()
        _TOPIC_CACHE[topic] = t
    if len(t) == 2 and (version != MQTT_5 or properties.topic_alias is None):
        raise ValueError("empty PUBLISH topic needs MQTT 5.0 and a topic alias")
    return t


def _publish_parts(topic, payload, version, qos, retain, dup, properties):
    if not 0 <= qos <= 2:
        raise ValueError(f"QoS must be 0, 1 or 2, got {qos!r}")
    if dup and not qos:  # [MQTT-3.3.1-2]
        raise ValueError("DUP must not be set on a QoS 0 PUBLISH")
    b0 = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    t = _topic(topic, version, properties)
    if version == MQTT_5:
        props = b"\x00" if properties is NO_PROPERTIES else encode_properties(properties, _PUBLISH)
    else:
        props = b""
    return b0, t, props


def encode_publish(topic: str, payload: bytes, version: int, qos: int = 0,
                   packet_id: int | None = None, retain: bool = False, dup: bool = False,
                   properties: Properties = NO_PROPERTIES) -> bytes:
    """One PUBLISH packet, without building a ``Publish`` object first."""
    b0, t, props = _publish_parts(topic, payload, version, qos, retain, dup, properties)
    pid = _pid(packet_id) if qos else b""
    n = len(t) + len(pid) + len(props) + len(payload)
    if n < 0x80:
        return b"".join((bytes((b0, n)), t, pid, props, payload))
    return b"".join((bytes((b0,)), encode_varint(n), t, pid, props, payload))


def publish_template(publish: Publish, version: int) -> tuple[bytes, bytes]:
    """Encode ``publish`` once for many subscribers; ``publish.packet_id`` is ignored.

    QoS 0: ``(packet, b"")``. QoS 1/2: ``(prefix, suffix)`` with the packet for one
    subscriber being ``prefix + packet_id.to_bytes(2, "big") + suffix``. A template is
    only valid for subscribers that receive the same QoS, retain flag, DUP flag and
    properties (per-subscriber subscription identifiers or topic aliases need their own
    template or ``encode_publish``).
    """
    p = publish
    b0, t, props = _publish_parts(p.topic, p.payload, version, p.qos, p.retain, p.dup,
                                  p.properties)
    n = len(t) + len(props) + len(p.payload) + (2 if p.qos else 0)
    head = bytes((b0, n)) if n < 0x80 else bytes((b0,)) + encode_varint(n)
    if not p.qos:
        return b"".join((head, t, props, p.payload)), b""
    return head + t, props + bytes(p.payload)


def set_dup(packet: bytes) -> bytes:
    """The same encoded QoS 1/2 PUBLISH with DUP set (a redelivery, [MQTT-3.3.1-1])."""
    if packet[0] >> 4 != 3 or not packet[0] & 0x06:
        raise ValueError("set_dup needs an encoded QoS 1 or 2 PUBLISH")
    return bytes((packet[0] | 0x08,)) + packet[1:]


# --------------------------------------------------------------------------- others

def _connect(p: Connect, version: int) -> bytes:
    v5 = version == MQTT_5
    if p.protocol_level == version:
        name = p.protocol_name
    else:
        name = "MQIsdp" if version == 3 else "MQTT"
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        if not 0 <= will.qos <= 2:
            raise ValueError(f"will QoS must be 0, 1 or 2, got {will.qos!r}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        if not v5 and p.username is None:  # 3.1.1 [MQTT-3.1.2-22]
            raise ValueError("MQTT 3.1.1 cannot carry a password without a username")
        flags |= 0x40
    parts = [encode_utf8(name), bytes((version, flags)), encode_u16(p.keep_alive)]
    if v5:
        parts.append(encode_properties(p.properties, PacketType.CONNECT))
    parts.append(encode_utf8(p.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties, WILL))
        parts.append(encode_utf8(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_utf8(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _fixed(0x10, b"".join(parts))


# 5.0 CONNACK reason code -> 3.1.1 return code. Server-side conditions become
# "server unavailable" (3), client-attributable refusals "not authorized" (5).
_V3_RETURN = {0x00: 0, 0x84: 1, 0x85: 2, 0x88: 3, 0x89: 3, 0x86: 4, 0x87: 5, 0x8C: 5,
              0x80: 3, 0x83: 3, 0x8B: 3, 0x97: 3, 0x9C: 3, 0x9D: 3, 0x9F: 3}


def connack_return_code(reason_code: int) -> int:
    """The 3.1.1 CONNACK return code for a 5.0 reason code (1..5 pass through)."""
    if 0 <= reason_code <= 5:
        return reason_code
    return _V3_RETURN.get(reason_code, 5)


def _connack(p: ConnAck, version: int) -> bytes:
    if version == MQTT_5:
        # [MQTT-3.2.2-6] session present is 0 with a failing reason code.
        body = bytes((0x01 if p.session_present and not p.reason_code else 0, p.reason_code))
        return _fixed(0x20, body + encode_properties(p.properties, PacketType.CONNACK))
    rc = connack_return_code(p.reason_code)
    # [MQTT-3.2.2-4] session present is 0 with a failing code; 3.1 has no such flag.
    sp = 0x01 if (p.session_present and rc == 0 and version == 4) else 0
    return bytes((0x20, 2, sp, rc))


def _ack(b0: int, ptype: int):
    def enc(p, version: int) -> bytes:
        pid = _pid(p.packet_id)
        if version != MQTT_5 or (p.reason_code == 0 and p.properties is NO_PROPERTIES):
            return bytes((b0, 2)) + pid
        props = encode_properties(p.properties, ptype)
        if props == b"\x00":  # spec 3.4.2.1: property length may be omitted
            return bytes((b0, 3)) + pid + bytes((p.reason_code,))
        return _fixed(b0, pid + bytes((p.reason_code,)) + props)
    return enc


def _subscribe(p: Subscribe, version: int) -> bytes:
    if not p.subscriptions:  # [MQTT-3.8.3-3]
        raise ValueError("SUBSCRIBE needs at least one subscription")
    v5 = version == MQTT_5
    parts = [_pid(p.packet_id)]
    if v5:
        parts.append(encode_properties(p.properties, PacketType.SUBSCRIBE))
    for s in p.subscriptions:
        if not 0 <= s.qos <= 2 or not 0 <= s.retain_handling <= 2:
            raise ValueError(f"invalid subscription options in {s!r}")
        opts = s.qos
        if v5:
            opts |= (0x04 if s.no_local else 0) | (0x08 if s.retain_as_published else 0) \
                | (s.retain_handling << 4)
        parts.append(encode_utf8(s.topic_filter))
        parts.append(bytes((opts,)))
    return _fixed(0x82, b"".join(parts))


def _suback(p: SubAck, version: int) -> bytes:
    if not p.reason_codes:
        raise ValueError("SUBACK needs at least one reason code")
    if version == MQTT_5:
        return _fixed(0x90, _pid(p.packet_id) + encode_properties(p.properties, PacketType.SUBACK)
                      + bytes(p.reason_codes))
    codes = bytes(rc if rc < 0x80 else 0x80 for rc in p.reason_codes)
    return _fixed(0x90, _pid(p.packet_id) + codes)


def _unsubscribe(p: Unsubscribe, version: int) -> bytes:
    if not p.topic_filters:  # [MQTT-3.10.3-2]
        raise ValueError("UNSUBSCRIBE needs at least one topic filter")
    parts = [_pid(p.packet_id)]
    if version == MQTT_5:
        parts.append(encode_properties(p.properties, PacketType.UNSUBSCRIBE))
    parts.extend(encode_utf8(f) for f in p.topic_filters)
    return _fixed(0xA2, b"".join(parts))


def _unsuback(p: UnsubAck, version: int) -> bytes:
    if version != MQTT_5:
        return b"\xb0\x02" + _pid(p.packet_id)
    if not p.reason_codes:
        raise ValueError("a 5.0 UNSUBACK needs one reason code per topic filter")
    return _fixed(0xB0, _pid(p.packet_id) + encode_properties(p.properties, PacketType.UNSUBACK)
                  + bytes(p.reason_codes))


def _reason_only(b0: int, ptype: int):
    def enc(p, version: int) -> bytes:
        if version != MQTT_5:
            if ptype == PacketType.AUTH:
                raise ValueError("AUTH exists only in MQTT 5.0")
            return bytes((b0, 0))
        if p.reason_code == 0 and p.properties is NO_PROPERTIES:
            return bytes((b0, 0))
        props = encode_properties(p.properties, ptype)
        if props == b"\x00":
            return bytes((b0, 1, p.reason_code))
        return _fixed(b0, bytes((p.reason_code,)) + props)
    return enc


def _publish(p: Publish, version: int) -> bytes:
    return encode_publish(p.topic, p.payload, version, p.qos, p.packet_id, p.retain, p.dup,
                          p.properties)


_ENCODERS = {
    Connect: _connect,
    ConnAck: _connack,
    Publish: _publish,
    PubAck: _ack(0x40, PacketType.PUBACK),
    PubRec: _ack(0x50, PacketType.PUBREC),
    PubRel: _ack(0x62, PacketType.PUBREL),
    PubComp: _ack(0x70, PacketType.PUBCOMP),
    Subscribe: _subscribe,
    SubAck: _suback,
    Unsubscribe: _unsubscribe,
    UnsubAck: _unsuback,
    PingReq: lambda p, v: b"\xc0\x00",
    PingResp: lambda p, v: b"\xd0\x00",
    Disconnect: _reason_only(0xE0, PacketType.DISCONNECT),
    Auth: _reason_only(0xF0, PacketType.AUTH),
}


def encode(packet, version: int) -> bytes:
    """The wire bytes of ``packet`` for protocol ``version`` (3, 4 or 5)."""
    if version not in (3, 4, 5):
        raise ValueError(f"version must be 3, 4 or 5, got {version!r}")
    enc = _ENCODERS.get(type(packet))
    if enc is None:
        raise TypeError(f"not an MQTT packet: {packet!r}")
    return enc(packet, version)
