"""Valid MQTT packets for the codec tests: fixed examples and hypothesis strategies.

A packet here only uses fields its protocol version carries, so that
``decode(encode(p, v)) == p`` must hold exactly. "side" is who *receives* the
packet: "server" (sent by a client) or "client" (sent by the server).
"""

from __future__ import annotations

from hypothesis import strategies as st

from kefu.broker.mqtt.packets import (
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
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

WILL = 0
T = PacketType

# Spec 2.2.2.2, written out independently of the implementation's table.
ALLOWED: dict[str, set[int]] = {
    "payload_format_indicator": {T.PUBLISH, WILL},
    "message_expiry_interval": {T.PUBLISH, WILL},
    "content_type": {T.PUBLISH, WILL},
    "response_topic": {T.PUBLISH, WILL},
    "correlation_data": {T.PUBLISH, WILL},
    "subscription_identifiers": {T.PUBLISH, T.SUBSCRIBE},
    "session_expiry_interval": {T.CONNECT, T.CONNACK, T.DISCONNECT},
    "assigned_client_identifier": {T.CONNACK},
    "server_keep_alive": {T.CONNACK},
    "authentication_method": {T.CONNECT, T.CONNACK, T.AUTH},
    "authentication_data": {T.CONNECT, T.CONNACK, T.AUTH},
    "request_problem_information": {T.CONNECT},
    "will_delay_interval": {WILL},
    "request_response_information": {T.CONNECT},
    "response_information": {T.CONNACK},
    "server_reference": {T.CONNACK, T.DISCONNECT},
    "reason_string": {T.CONNACK, T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP, T.SUBACK, T.UNSUBACK,
                      T.DISCONNECT, T.AUTH},
    "receive_maximum": {T.CONNECT, T.CONNACK},
    "topic_alias_maximum": {T.CONNECT, T.CONNACK},
    "topic_alias": {T.PUBLISH},
    "maximum_qos": {T.CONNACK},
    "retain_available": {T.CONNACK},
    "user_properties": {T.CONNECT, T.CONNACK, T.PUBLISH, WILL, T.PUBACK, T.PUBREC, T.PUBREL,
                        T.PUBCOMP, T.SUBSCRIBE, T.SUBACK, T.UNSUBSCRIBE, T.UNSUBACK,
                        T.DISCONNECT, T.AUTH},
    "maximum_packet_size": {T.CONNECT, T.CONNACK},
    "wildcard_subscription_available": {T.CONNACK},
    "subscription_identifier_available": {T.CONNACK},
    "shared_subscription_available": {T.CONNACK},
}

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
topic_names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
                      min_size=1, max_size=12)
topic_filters = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        min_size=1, max_size=12)
small_binary = st.binary(max_size=16)
packet_ids = st.integers(1, 0xFFFF)
u16, u32 = st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
flag01 = st.integers(0, 1)

VALUES = {
    "payload_format_indicator": flag01,
    "message_expiry_interval": u32,
    "content_type": text,
    "response_topic": topic_names,
    "correlation_data": small_binary,
    "session_expiry_interval": u32,
    "assigned_client_identifier": text,
    "server_keep_alive": u16,
    "authentication_method": text,
    "authentication_data": small_binary,
    "request_problem_information": flag01,
    "will_delay_interval": u32,
    "request_response_information": flag01,
    "response_information": text,
    "server_reference": text,
    "reason_string": text,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": u16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": flag01,
    "retain_available": flag01,
    "maximum_packet_size": st.integers(1, 0xFFFFFFFF),
    "wildcard_subscription_available": flag01,
    "subscription_identifier_available": flag01,
    "shared_subscription_available": flag01,
}


@st.composite
def properties(draw, where: int, *, sub_ids: int = 0, exclude: tuple[str, ...] = ()):
    """Properties allowed in ``where``; ``sub_ids`` = how many subscription ids at most."""
    kwargs = {}
    for name, allowed in ALLOWED.items():
        if where not in allowed or name in exclude:
            continue
        if name == "user_properties":
            kwargs[name] = tuple(draw(st.lists(st.tuples(text, text), max_size=3)))
        elif name == "subscription_identifiers":
            kwargs[name] = tuple(draw(st.lists(st.integers(1, 268_435_455), max_size=sub_ids)))
        elif draw(st.booleans()):
            kwargs[name] = draw(VALUES[name])
    props = Properties(**kwargs)
    return NO_PROPERTIES if props == NO_PROPERTIES else props


def _props(v, where, **kw):
    return properties(where, **kw) if v == 5 else st.just(NO_PROPERTIES)


@st.composite
def connects(draw, v: int):
    will = None
    if draw(st.booleans()):
        will = Will(draw(topic_names), draw(small_binary), draw(st.integers(0, 2)),
                    draw(st.booleans()), draw(_props(v, WILL)))
    username = draw(st.none() | text)
    password = draw(st.none() | small_binary)
    if v < 5 and username is None:
        password = None  # 3.1.1 [MQTT-3.1.2-22]
    return Connect(draw(text), v, draw(st.booleans()), draw(u16), username, password, will,
                   draw(_props(v, T.CONNECT)), "MQIsdp" if v == 3 else "MQTT")


V5_CONNACK = [0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
              0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F]


@st.composite
def connacks(draw, v: int):
    rc = draw(st.sampled_from(V5_CONNACK if v == 5 else [0, 0x84, 0x85, 0x88, 0x86, 0x87]))
    sp = draw(st.booleans()) and rc == 0 and v != 3
    return ConnAck(sp, rc, draw(_props(v, T.CONNACK)))


@st.composite
def publishes(draw, v: int, side: str):
    qos = draw(st.integers(0, 2))
    props = draw(_props(v, T.PUBLISH, sub_ids=3 if side == "client" else 0))
    topic = draw(topic_names)
    if v == 5 and props.topic_alias is not None and draw(st.booleans()):
        topic = ""
    return Publish(topic, draw(st.binary(max_size=300)), qos, draw(st.booleans()),
                   draw(st.booleans()) and qos > 0, draw(packet_ids) if qos else None, props)


PUB_CODES = [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
REL_CODES = [0x00, 0x92]


@st.composite
def acks(draw, v: int):
    cls = draw(st.sampled_from([PubAck, PubRec, PubRel, PubComp]))
    ptype = {PubAck: T.PUBACK, PubRec: T.PUBREC, PubRel: T.PUBREL, PubComp: T.PUBCOMP}[cls]
    if v < 5:
        return cls(draw(packet_ids))
    codes = PUB_CODES if cls in (PubAck, PubRec) else REL_CODES
    return cls(draw(packet_ids), draw(st.sampled_from(codes)), draw(_props(v, ptype)))


@st.composite
def subscribes(draw, v: int):
    def one(draw_):
        if v < 5:
            return Subscription(draw_(topic_filters), draw_(st.integers(0, 2)))
        return Subscription(draw_(topic_filters), draw_(st.integers(0, 2)), draw_(st.booleans()),
                            draw_(st.booleans()), draw_(st.integers(0, 2)))
    subs = tuple(one(draw) for _ in range(draw(st.integers(1, 4))))
    return Subscribe(draw(packet_ids), subs, draw(_props(v, T.SUBSCRIBE, sub_ids=1)))


SUBACK_CODES = [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]
UNSUBACK_CODES = [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]
DISCONNECT_CODES = [0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90,
                    0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F,
                    0xA0, 0xA1, 0xA2]


def subacks(v: int):
    codes = SUBACK_CODES if v == 5 else [0, 1, 2, 0x80]
    return st.builds(SubAck, packet_ids, st.lists(st.sampled_from(codes), min_size=1, max_size=5)
                     .map(tuple), _props(v, T.SUBACK))


def unsubscribes(v: int):
    return st.builds(Unsubscribe, packet_ids,
                     st.lists(topic_filters, min_size=1, max_size=4).map(tuple),
                     _props(v, T.UNSUBSCRIBE))


def unsubacks(v: int):
    if v < 5:
        return st.builds(UnsubAck, packet_ids)
    return st.builds(UnsubAck, packet_ids,
                     st.lists(st.sampled_from(UNSUBACK_CODES), min_size=1, max_size=5).map(tuple),
                     _props(v, T.UNSUBACK))


def disconnects(v: int, side: str):
    if v < 5:
        return st.just(Disconnect())
    exclude = ("session_expiry_interval",) if side == "client" else ()
    return st.builds(Disconnect, st.sampled_from(DISCONNECT_CODES),
                     properties(T.DISCONNECT, exclude=exclude))


def auths():
    return st.builds(Auth, st.sampled_from([0x00, 0x18, 0x19]), properties(T.AUTH))


def packets(v: int, side: str):
    """Any packet that ``side`` may receive in version ``v`` (CONNECT excluded)."""
    common = [publishes(v, side), acks(v)]
    if side == "server":
        common += [subscribes(v), unsubscribes(v), st.just(PingReq()), disconnects(v, side)]
    else:
        common += [connacks(v), subacks(v), unsubacks(v), st.just(PingResp())]
        if v == 5:
            common.append(disconnects(v, side))
    if v == 5:
        common.append(auths())
    return st.one_of(common)


# --------------------------------------------------------------------------- fixed examples

FULL_PROPS_PUBLISH = Properties(
    payload_format_indicator=1, message_expiry_interval=3600, content_type="text/plain",
    response_topic="reply/here", correlation_data=b"\x01\x02", subscription_identifiers=(1, 300),
    topic_alias=7, user_properties=(("k", "v"), ("k", "v2")))


def examples(v: int, side: str) -> list:
    """One or more hand-written packets of every type ``side`` may receive."""
    v5 = v == 5
    out: list = []
    if side == "server":
        out += [
            Connect("dev-1", v, True, 30, protocol_name="MQIsdp" if v == 3 else "MQTT"),
            Publish("a/b", b"hello", 0),
            Publish("a/b", b"x" * 200, 1, retain=True, packet_id=1),
            Publish("a/\u00e9/\U0001F600", b"", 2, dup=True, packet_id=0xFFFF),
            PubAck(1), PubRec(2), PubRel(3), PubComp(4),
            Subscribe(5, (Subscription("a/+", 1), Subscription("#", 2))),
            Unsubscribe(6, ("a/+", "#")),
            PingReq(),
            Disconnect(),
        ]
        if v5:
            out += [
                Publish("", b"aliased", 1, packet_id=9, properties=Properties(topic_alias=3)),
                PubAck(1, 0x10), PubRec(2, 0x80, Properties(reason_string="no")),
                Subscribe(7, (Subscription("s", 1, True, True, 2),),
                          Properties(subscription_identifiers=(42,))),
                Disconnect(0x04, Properties(session_expiry_interval=10)),
                Auth(0x18, Properties(authentication_method="SCRAM", authentication_data=b"x")),
                Auth(),
            ]
    else:
        out += [
            ConnAck(False, 0), ConnAck(v != 3, 0), ConnAck(False, 0x86),
            Publish("a/b", b"hello", 0),
            Publish("a/b", b"y" * 20000, 2, packet_id=77),
            PubAck(1), PubRec(2), PubRel(3), PubComp(4),
            SubAck(5, (0, 1, 2, 0x80)),
            UnsubAck(6, (0x00, 0x11) if v5 else ()),
            PingResp(),
        ]
        if v5:
            out += [
                ConnAck(False, 0, Properties(assigned_client_identifier="auto-1",
                                             server_keep_alive=20, maximum_qos=1,
                                             receive_maximum=10, topic_alias_maximum=5)),
                Publish("a/b", b"p", 1, packet_id=2, properties=FULL_PROPS_PUBLISH),
                SubAck(8, (0x87, 0xA2), Properties(reason_string="denied")),
                Disconnect(0x8E, Properties(reason_string="taken over")),
                Auth(0x19, Properties(authentication_method="SCRAM")),
            ]
    return out
