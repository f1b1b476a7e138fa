"""The session machine and router, sans-I/O: packets in, packets out, time passed in."""

from __future__ import annotations

import pytest
from sansio import Peer, make_router

from kefu.broker.mqtt.codec import encode
from kefu.broker.mqtt.packets import (
    MQTT_5,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)

V4, V5 = 4, 5


# --------------------------------------------------------------------------- CONNECT


@pytest.mark.parametrize("version", [V4, V5])
def test_connect_then_connack_without_session(version):
    r = make_router()
    p = Peer(r, version)
    ack = p.connect("dev1")
    assert ack.reason_code == 0 and not ack.session_present
    assert r.stats.connected == 1
    assert p.send(PingReq()) == [PingResp()]


def test_first_packet_must_be_connect_3_1_1_plain_close():
    """[MQTT-3.1.0-1]: anything before CONNECT closes; 3.1.1 gets no packet back."""
    p = Peer(make_router(), V4)
    assert p.send_bytes(encode(PingReq(), 4)) == []
    assert p.closed


@pytest.mark.parametrize("version,expect", [(V4, []), (V5, [Disconnect(0x82)])])
def test_second_connect_is_a_protocol_error(version, expect):
    """[MQTT-3.1.0-2]: a second CONNECT closes (5.0 with DISCONNECT 0x82)."""
    p = Peer(make_router(), version)
    p.connect("a")
    assert p.send(Connect("a", protocol_level=version)) == expect
    assert p.closed


def test_unsupported_protocol_level_gets_connack_0x01():
    p = Peer(make_router(), V4)
    raw = bytearray(encode(Connect("x"), 4))
    raw[8] = 7  # protocol level byte
    assert p.send_bytes(bytes(raw)) == [ConnAck(False, 0x84)]  # 3.1.1 return code 1
    assert p.closed


def test_empty_client_id_3_1_1_clean_session_gets_one():
    r = make_router()
    p = Peer(r, V4)
    assert p.connect("", clean=True).reason_code == 0
    assert p.proto.client_id.startswith("kefu-")


def test_empty_client_id_3_1_1_persistent_is_identifier_rejected():
    """[MQTT-3.1.3-8]: return code 0x02 (identifier rejected)."""
    p = Peer(make_router(), V4)
    assert p.connect("", clean=False).reason_code == 0x85  # 3.1.1 return code 2
    assert p.closed


def test_empty_client_id_5_0_is_assigned_and_told():
    r = make_router()
    p = Peer(r, V5)
    ack = p.connect("", clean=False)
    assigned = ack.properties.assigned_client_identifier
    assert assigned and assigned == p.proto.client_id and assigned in r.sessions


def test_enhanced_auth_is_refused_with_bad_authentication_method():
    p = Peer(make_router(), V5)
    ack = p.connect("a", authentication_method="SCRAM-SHA-1")
    assert ack.reason_code == 0x8C
    assert p.closed


def test_auth_packet_after_connect_is_protocol_error():
    p = Peer(make_router(), V5)
    p.connect("a")
    assert p.send(Auth(0x19)) == [Disconnect(0x82)]


def test_connack_5_0_advertises_limits_and_response_information():
    r = make_router(receive_maximum=10, topic_alias_maximum=5, maximum_qos=1, retain_available=False)
    ack = Peer(r, V5).connect("a", request_response_information=1)
    pr = ack.properties
    assert (pr.receive_maximum, pr.topic_alias_maximum, pr.maximum_qos, pr.retain_available) == (10, 5, 1, 0)
    assert pr.maximum_packet_size == r.limits.max_packet_size
    assert pr.response_information == "kefu/response/a"


def test_session_expiry_is_capped_and_told():
    r = make_router(max_session_expiry=60)
    ack = Peer(r, V5).connect("a", session_expiry_interval=3600)
    assert ack.properties.session_expiry_interval == 60


# --------------------------------------------------------------------------- keepalive


def test_keepalive_deadline_is_one_and_a_half_times():
    p = Peer(make_router(), V4)
    p.connect("a", keep_alive=10, now=100.0)
    assert p.proto.deadline == 115.0
    p.send(PingReq(), now=110.0)
    assert p.proto.deadline == 125.0


def test_keepalive_expiry_5_0_sends_0x8d_and_publishes_will():
    r = make_router()
    watcher = Peer(r, V4)
    watcher.connect("w")
    watcher.subscribe("will/#")
    p = Peer(r, V5)
    p.connect("a", keep_alive=10, will=Will("will/a", b"gone"))
    p.proto.keepalive_expired(15.0)
    assert p.received() == [Disconnect(0x8D)]
    assert [m.payload for m in watcher.received()] == [b"gone"]


def test_server_keep_alive_5_0():
    r = make_router(max_keepalive=30)
    p = Peer(r, V5)
    assert p.connect("a", keep_alive=0).properties.server_keep_alive == 30
    assert p.proto.keep_alive == 30


def test_keep_alive_above_maximum_3_1_1_is_refused():
    r = make_router(max_keepalive=30)
    p = Peer(r, V4)
    assert p.connect("a", keep_alive=60).reason_code == 0x85
    ok = Peer(r, V4)
    assert ok.connect("b", keep_alive=20).reason_code == 0
    none = Peer(r, V4)  # 0 ("no keep alive") is accepted, as by Mosquitto
    assert none.connect("c", keep_alive=0).reason_code == 0
    assert none.proto.keep_alive == 0


def test_connect_timeout_deadline():
    p = Peer(make_router(connect_timeout=5), V4)
    assert p.proto.deadline == 5.0


# --------------------------------------------------------------------------- QoS


@pytest.mark.parametrize("version", [V4, V5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_reaches_subscriber_at_min_qos(version, qos):
    r = make_router()
    sub = Peer(r, version)
    sub.connect("sub")
    assert sub.subscribe("t/+", qos=1) == [SubAck(1, (1,))]
    pub = Peer(r, version)
    pub.connect("pub")
    replies = pub.publish("t/x", b"hello", qos=qos, pid=7)
    if qos == 1:
        assert replies == [PubAck(7)]
    elif qos == 2:
        assert replies == [PubRec(7)]
        assert pub.send(PubRel(7)) == [PubComp(7)]
    [msg] = sub.received()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("t/x", b"hello", min(qos, 1), False)
    assert (msg.packet_id is not None) == (min(qos, 1) > 0)


def test_qos2_inbound_is_routed_once_despite_redelivery():
    r = make_router()
    sub = Peer(r, V4)
    sub.connect("sub")
    sub.subscribe("t", qos=0)
    pub = Peer(r, V4)
    pub.connect("pub")
    assert pub.publish("t", b"once", qos=2, pid=3) == [PubRec(3)]
    assert pub.publish("t", b"once", qos=2, pid=3, dup=True) == [PubRec(3)]
    assert len(sub.received()) == 1
    assert pub.send(PubRel(3)) == [PubComp(3)]
    # After PUBCOMP the id is free again: a new message with it is routed.
    pub.publish("t", b"again", qos=2, pid=3)
    assert [m.payload for m in sub.received()] == [b"again"]


def test_pubrel_for_unknown_id_5_0_gets_0x92():
    p = Peer(make_router(), V5)
    p.connect("a")
    assert p.send(PubRel(9)) == [PubComp(9, 0x92)]


def test_qos2_outbound_flow():
    r = make_router()
    sub = Peer(r, V5)
    sub.connect("sub")
    sub.subscribe("t", qos=2)
    pub = Peer(r, V5)
    pub.connect("pub")
    pub.publish("t", b"m", qos=2, pid=1)
    [m] = sub.received()
    assert m.qos == 2 and m.packet_id
    assert sub.send(PubRec(m.packet_id)) == [PubRel(m.packet_id)]
    assert sub.proto.session.inflight
    assert sub.send(PubComp(m.packet_id)) == []
    assert not sub.proto.session.inflight


def test_receive_maximum_window_outbound():
    """The client's receive maximum bounds unacknowledged deliveries; the rest wait in order."""
    r = make_router()
    sub = Peer(r, V5)
    sub.connect("sub", receive_maximum=2)
    sub.subscribe("t", qos=1)
    pub = Peer(r, V5)
    pub.connect("pub")
    for i in range(5):
        pub.publish("t", b"%d" % i, qos=1, pid=i + 1)
    first = sub.received()
    assert [m.payload for m in first] == [b"0", b"1"]
    more = sub.send(PubAck(first[0].packet_id))  # one slot frees: exactly one more
    assert [m.payload for m in more] == [b"2"]
    rest = sub.send(PubAck(first[1].packet_id), PubAck(more[0].packet_id))
    assert [m.payload for m in rest] == [b"3", b"4"]


def test_receive_maximum_exceeded_inbound_is_0x93():
    r = make_router(receive_maximum=2)
    p = Peer(r, V5)
    p.connect("a")
    p.publish("t", qos=2, pid=1)
    p.publish("t", qos=2, pid=2)
    assert p.publish("t", qos=2, pid=3) == [Disconnect(0x93)]
    assert p.closed


def test_qos_above_maximum_5_0_is_0x9b():
    p = Peer(make_router(maximum_qos=1), V5)
    p.connect("a")
    assert p.publish("t", qos=2, pid=1) == [Disconnect(0x9B)]


def test_granted_qos_is_capped_by_maximum_qos():
    p = Peer(make_router(maximum_qos=1), V4)
    p.connect("a")
    assert p.subscribe("t", qos=2) == [SubAck(1, (1,))]


# --------------------------------------------------------------------------- sessions


def _persistent_sub(r, version=V4, cid="sub", qos=1, **kw):
    p = Peer(r, version)
    if version == V5:
        kw.setdefault("session_expiry_interval", 3600)
    p.connect(cid, clean=False, **kw)
    p.subscribe("t/#", qos=qos)
    return p


@pytest.mark.parametrize("version", [V4, V5])
def test_offline_messages_delivered_on_reconnect(version):
    r = make_router()
    sub = _persistent_sub(r, version)
    sub.send(Disconnect())
    pub = Peer(r, version)
    pub.connect("pub")
    pub.publish("t/1", b"a", qos=1, pid=1)
    pub.publish("t/2", b"b", qos=0)  # QoS 0 is not kept for an offline session
    pub.publish("t/3", b"c", qos=2, pid=2)
    back = Peer(r, version)
    ack = back.connect("sub", clean=False, **({"session_expiry_interval": 3600} if version == V5 else {}))
    assert ack.session_present
    assert [(m.topic, m.payload, m.qos) for m in back.pending] == [("t/1", b"a", 1), ("t/3", b"c", 1)]


def test_unacknowledged_messages_are_resent_with_dup():
    r = make_router()
    sub = _persistent_sub(r, V4, qos=2)
    pub = Peer(r, V4)
    pub.connect("pub")
    pub.publish("t/1", b"q1", qos=1, pid=1)
    pub.publish("t/2", b"q2", qos=2, pid=2)
    m1, m2 = sub.received()
    assert not m1.dup and not m2.dup
    sub.send(PubRec(m2.packet_id))  # q2 reached PUBREL state; q1 never acknowledged
    sub.proto.connection_lost(1.0)
    back = Peer(r, V4)
    assert back.connect("sub", clean=False).session_present
    resent = back.pending
    assert resent[0] == Publish("t/1", b"q1", 1, False, True, m1.packet_id)
    assert resent[1] == PubRel(m2.packet_id)


def test_clean_start_discards_the_old_session():
    r = make_router()
    sub = _persistent_sub(r, V4)
    sub.send(Disconnect())
    Peer(r, V4).connect("pub") and None
    back = Peer(r, V4)
    assert not back.connect("sub", clean=True).session_present
    assert r.subscription_count == 0


def test_session_expiry_5_0():
    r = make_router()
    sub = _persistent_sub(r, V5, session_expiry_interval=60)
    sub.send(Disconnect(), now=10.0)
    r.tick(69.0)
    assert "sub" in r.sessions
    r.tick(70.0)
    assert "sub" not in r.sessions and r.subscription_count == 0


def test_disconnect_may_shorten_session_expiry():
    r = make_router()
    sub = _persistent_sub(r, V5, session_expiry_interval=600)
    sub.send(Disconnect(0, Properties(session_expiry_interval=0)), now=1.0)
    assert "sub" not in r.sessions


def test_disconnect_cannot_set_expiry_after_zero():
    """[MQTT-3.14.2-2]"""
    p = Peer(make_router(), V5)
    p.connect("a")
    assert p.send(Disconnect(0, Properties(session_expiry_interval=30))) == [Disconnect(0x82)]


@pytest.mark.parametrize("policy,expect", [("drop_oldest", [b"3", b"4", b"5"]), ("drop_new", [b"1", b"2", b"3"])])
def test_offline_queue_is_bounded_with_policy_and_counted(policy, expect):
    r = make_router(max_offline_messages=3, queue_drop_policy=policy)
    sub = _persistent_sub(r, V4)
    sub.send(Disconnect())
    pub = Peer(r, V4)
    pub.connect("pub")
    for i in range(1, 6):
        pub.publish("t/x", b"%d" % i, qos=1, pid=i)
    assert r.stats.dropped == 2
    back = Peer(r, V4)
    back.connect("sub", clean=False)
    assert [m.payload for m in back.pending] == expect


def test_qos0_send_queue_bounded_in_bytes():
    r = make_router(max_queued_bytes=1000, queue_drop_policy="drop_new")
    sub = Peer(r, V4)
    sub.connect("sub")
    sub.subscribe("t")
    pub = Peer(r, V4)
    pub.connect("pub")
    for i in range(50):
        pub.publish("t", b"x" * 100)
    got = sub.received()
    assert 5 <= len(got) < 10
    assert r.stats.dropped == 50 - len(got)


def test_message_expiry_drops_expired_and_decrements_the_rest():
    r = make_router()
    sub = _persistent_sub(r, V5)
    sub.send(Disconnect(), now=0.0)
    pub = Peer(r, V5)
    pub.connect("pub")
    pub.publish("t/short", b"s", qos=1, pid=1, properties=Properties(message_expiry_interval=5))
    pub.publish("t/long", b"l", qos=1, pid=2, properties=Properties(message_expiry_interval=100))
    back = Peer(r, V5)
    back.connect("sub", clean=False, session_expiry_interval=3600, now=30.0)
    [m] = back.pending
    assert m.topic == "t/long" and m.properties.message_expiry_interval == 70


# --------------------------------------------------------------------------- takeover and wills


def test_takeover_5_0_old_gets_0x8e():
    r = make_router()
    old = Peer(r, V5)
    old.connect("dev", clean=False, session_expiry_interval=100)
    old.subscribe("t", qos=1)
    new = Peer(r, V5)
    assert new.connect("dev", clean=False, session_expiry_interval=100).session_present
    assert old.received() == [Disconnect(0x8E)]
    assert old.closed and r.sessions["dev"].proto is new.proto
    assert r.stats.connected == 1


def test_takeover_3_1_1_plain_close():
    r = make_router()
    old = Peer(r, V4)
    old.connect("dev")
    Peer(r, V4).connect("dev")
    assert old.received() == [] and old.closed


def _watch(r, filt="will/#"):
    w = Peer(r, V4)
    w.connect("watcher")
    w.subscribe(filt)
    return w


@pytest.mark.parametrize("version", [V4, V5])
def test_will_on_abnormal_close_not_on_disconnect(version):
    r = make_router()
    w = _watch(r)
    a = Peer(r, version)
    a.connect("a", will=Will("will/a", b"lost", retain=True))
    a.proto.connection_lost(1.0)
    [m] = w.received()
    assert (m.topic, m.payload) == ("will/a", b"lost")
    assert r.retained.get("will/a").payload == b"lost"
    b = Peer(r, version)
    b.connect("b", will=Will("will/b", b"lost"))
    b.send(Disconnect())
    assert w.received() == []


def test_disconnect_with_will_0x04_sends_the_will():
    r = make_router()
    w = _watch(r)
    a = Peer(r, V5)
    a.connect("a", will=Will("will/a", b"bye"))
    a.send(Disconnect(0x04))
    assert [m.payload for m in w.received()] == [b"bye"]


def test_will_delay_and_cancel_by_reconnect():
    r = make_router()
    w = _watch(r)
    will = Will("will/a", b"late", properties=Properties(will_delay_interval=30))
    a = Peer(r, V5)
    a.connect("a", clean=False, session_expiry_interval=600, will=will)
    a.proto.connection_lost(100.0)
    assert w.received() == []
    assert r.next_deadline == 130.0
    r.tick(129.0)
    assert w.received() == []
    r.tick(130.0)
    [m] = w.received()
    assert m.payload == b"late"
    # Reconnecting within the delay cancels it.
    a2 = Peer(r, V5)
    a2.connect("a", clean=False, session_expiry_interval=600, will=will, now=200.0)
    a2.proto.connection_lost(201.0)
    Peer(r, V5).connect("a", clean=False, session_expiry_interval=600, now=210.0)
    r.tick(300.0)
    assert w.received() == []


def test_will_published_when_session_ends_before_delay():
    r = make_router()
    w = _watch(r)
    will = Will("will/a", b"x", properties=Properties(will_delay_interval=100))
    a = Peer(r, V5)
    a.connect("a", session_expiry_interval=10, will=will)
    a.proto.connection_lost(0.0)
    r.tick(10.0)
    assert [m.payload for m in w.received()] == [b"x"]


def test_takeover_publishes_will_without_delay():
    r = make_router()
    w = _watch(r)
    a = Peer(r, V4)
    a.connect("a", will=Will("will/a", b"taken"))
    Peer(r, V4).connect("a")
    assert [m.payload for m in w.received()] == [b"taken"]


def test_server_shutdown_close_has_no_will():
    r = make_router()
    w = _watch(r)
    a = Peer(r, V5)
    a.connect("a", will=Will("will/a", b"x"))
    a.proto.close(0x8B, 1.0, will=False)
    assert a.received() == [Disconnect(0x8B)]
    assert w.received() == []


# --------------------------------------------------------------------------- topic aliases


def test_inbound_topic_alias():
    r = make_router(topic_alias_maximum=4)
    sub = Peer(r, V5)
    sub.connect("sub")
    sub.subscribe("long/topic/name")
    p = Peer(r, V5)
    p.connect("p")
    p.publish("long/topic/name", b"1", properties=Properties(topic_alias=2))
    p.publish("", b"2", properties=Properties(topic_alias=2))
    got = sub.received()
    assert [(m.topic, m.payload) for m in got] == [("long/topic/name", b"1"), ("long/topic/name", b"2")]
    assert all(m.properties.topic_alias is None for m in got)


def test_topic_alias_above_maximum_is_0x94():
    p = Peer(make_router(topic_alias_maximum=4), V5)
    p.connect("p")
    assert p.publish("t", properties=Properties(topic_alias=5)) == [Disconnect(0x94)]


def test_unknown_topic_alias_is_protocol_error():
    p = Peer(make_router(), V5)
    p.connect("p")
    assert p.publish("", properties=Properties(topic_alias=1)) == [Disconnect(0x82)]


# --------------------------------------------------------------------------- 5.0 properties and options


def test_properties_pass_through_to_5_0_and_are_dropped_for_3_1_1():
    r = make_router()
    s5 = Peer(r, V5)
    s5.connect("s5")
    s5.subscribe("t")
    s4 = Peer(r, V4)
    s4.connect("s4")
    s4.subscribe("t")
    props = Properties(payload_format_indicator=1, content_type="text/plain", response_topic="reply/me",
                       correlation_data=b"\x01\x02", user_properties=(("k", "v"), ("k", "w")))
    p = Peer(r, V5)
    p.connect("p")
    p.publish("t", b"hi", properties=props)
    [m5] = s5.received()
    assert m5.properties == props
    [m4] = s4.received()
    assert m4.payload == b"hi"


def test_no_local():
    r = make_router()
    p = Peer(r, V5)
    p.connect("me")
    p.subscribe(Subscription("t", 0, no_local=True), Subscription("u", 0))
    got = p.publish("t", b"mine") + p.publish("u", b"echo")
    assert [m.payload for m in got] == [b"echo"]


def test_retain_as_published():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s")
    s.subscribe(Subscription("rap", 0, retain_as_published=True), Subscription("plain", 0))
    p = Peer(r, V5)
    p.connect("p")
    p.publish("rap", b"1", retain=True)
    p.publish("plain", b"2", retain=True)
    assert [(m.topic, m.retain) for m in s.received()] == [("rap", True), ("plain", False)]


def test_retained_messages_and_retain_handling():
    r = make_router()
    p = Peer(r, V5)
    p.connect("p")
    p.publish("r/a", b"A", retain=True, qos=1, pid=1)
    p.publish("r/b", b"B", retain=True)
    s = Peer(r, V5)
    s.connect("s")
    out = s.subscribe(Subscription("r/+", 1, retain_handling=0))
    assert out[0] == SubAck(1, (1,))
    assert sorted((m.topic, m.retain, m.qos) for m in out[1:]) == [("r/a", True, 1), ("r/b", True, 0)]
    # retain handling 1: only for a new subscription
    assert s.subscribe(Subscription("r/+", 1, retain_handling=1), pid=2) == [SubAck(2, (1,))]
    out = s.subscribe(Subscription("r/#", 0, retain_handling=1), pid=3)
    assert len(out) == 3
    # retain handling 2: never
    assert s.subscribe(Subscription("r/a", 0, retain_handling=2), pid=4) == [SubAck(4, (0,))]
    # an empty retained payload clears
    p.publish("r/a", b"", retain=True)
    s2 = Peer(r, V4)
    s2.connect("s2")
    assert [m.topic for m in s2.subscribe("r/#")[1:]] == ["r/b"]


def test_retained_follow_the_dollar_rule():
    r = make_router()
    r.publish_sys(0.0)
    s = Peer(r, V4)
    s.connect("s")
    assert s.subscribe("#") == [SubAck(1, (0,))]
    out = s.subscribe("$SYS/broker/clients/+", pid=2)
    assert {m.topic for m in out[1:]} >= {"$SYS/broker/clients/connected"}


def test_subscription_identifiers_and_overlap_merge():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s")
    s.subscribe("a/+", props=Properties(subscription_identifiers=(7,)))
    s.subscribe(Subscription("a/#", 1), pid=2, props=Properties(subscription_identifiers=(9,)))
    p = Peer(r, V5)
    p.connect("p")
    p.publish("a/b", b"x", qos=1, pid=1)
    [m] = s.received()
    assert m.qos == 1 and sorted(m.properties.subscription_identifiers) == [7, 9]


def test_unsubscribe_codes():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s")
    s.subscribe("a")
    assert s.send(Unsubscribe(2, ("a", "b"))) == [UnsubAck(2, (0x00, 0x11))]
    p = Peer(r, V5)
    p.connect("p")
    assert p.publish("a", qos=1, pid=1) == [PubAck(1, 0x10)]  # no matching subscribers


def test_invalid_filter_and_shared_no_local():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s")
    assert s.subscribe("a/#/b") == [SubAck(1, (0x8F,))]
    s4 = Peer(r, V4)
    s4.connect("s4")
    assert s4.subscribe("a/#/b") == [SubAck(1, (0x80,))]
    assert s.subscribe(Subscription("$share/g/a", 0, no_local=True), pid=2) == [Disconnect(0x82)]


# --------------------------------------------------------------------------- shared subscriptions


def test_shared_subscription_round_robin_skips_disconnected():
    r = make_router()
    members = []
    for i in range(3):
        m = Peer(r, V5)
        m.connect(f"m{i}", clean=False, session_expiry_interval=100)
        m.subscribe("$share/g/jobs/#", qos=1)
        members.append(m)
    other = Peer(r, V4)
    other.connect("other")
    other.subscribe("jobs/#")
    p = Peer(r, V4)
    p.connect("p")
    for i in range(6):
        p.publish("jobs/x", b"%d" % i)
    counts = [len(m.received()) for m in members]
    assert counts == [2, 2, 2]
    assert len(other.received()) == 6
    members[1].proto.connection_lost(1.0)
    for i in range(4):
        p.publish("jobs/x", b"%d" % i)
    assert [len(members[0].received()), len(members[2].received())] == [2, 2]


def test_shared_subscription_gets_no_retained():
    r = make_router()
    p = Peer(r, V4)
    p.connect("p")
    p.publish("jobs/1", b"r", retain=True)
    s = Peer(r, V5)
    s.connect("s")
    assert s.subscribe("$share/g/jobs/#") == [SubAck(1, (0,))]


# --------------------------------------------------------------------------- ACL


def _acl_router():
    return make_router(auth_acl=[
        {"action": "subscribe", "topic": "secret/#", "permission": "deny"},
        {"action": "publish", "topic": "devices/%c/#", "permission": "allow"},
        {"action": "publish", "topic": "#", "permission": "deny"},
    ])


@pytest.mark.parametrize("version,code", [(V4, 0x80), (V5, 0x87)])
def test_acl_denied_subscription(version, code):
    r = _acl_router()
    s = Peer(r, version)
    s.connect("s")
    assert s.subscribe("secret/x", "open/x") == [SubAck(1, (code, 0))]


@pytest.mark.parametrize("version,code", [(V4, 0x80), (V5, 0x87)])
def test_acl_wildcards_granted_and_denied_topics_withheld_at_delivery(version, code):
    r = _acl_router()
    r.inject("secret/old", b"r1", 0.0, retain=True)
    r.inject("open/old", b"r2", 0.0, retain=True)
    s = Peer(r, version)
    s.connect("s")
    out = s.subscribe("#", "+/+", "secret/#")
    assert out[0] == SubAck(1, (0, 0, code))
    assert [m.topic for m in out[1:]] == ["open/old", "open/old"]  # retained: one per filter, no secret
    r.inject("secret/x", b"no", 0.0)
    r.inject("open/x", b"yes", 0.0)
    assert [m.topic for m in s.received()] == ["open/x"]  # once: overlapping filters merge


def test_acl_denied_publish_3_1_1_dropped_5_0_0x87():
    r = _acl_router()
    w = Peer(r, V4)
    w.connect("w")
    assert w.subscribe("#") == [SubAck(1, (0,))]  # granted: secret/... is withheld at delivery
    w.subscribe("other/#", "devices/#", pid=2)
    p4 = Peer(r, V4)
    p4.connect("d4")
    assert p4.publish("other/x", qos=1, pid=1) == [PubAck(1)]
    p5 = Peer(r, V5)
    p5.connect("d5")
    assert p5.publish("other/x", qos=1, pid=1) == [PubAck(1, 0x87)]
    assert p5.publish("devices/d5/temp", b"ok", qos=1, pid=2) == [PubAck(2)]
    assert [m.topic for m in w.received()] == ["devices/d5/temp"]


def test_clients_cannot_publish_to_sys():
    r = make_router()
    p = Peer(r, V5)
    p.connect("p")
    assert p.publish("$SYS/broker/version", b"fake", qos=1, pid=1) == [PubAck(1, 0x87)]


# --------------------------------------------------------------------------- fast path and $SYS


def test_fan_out_shares_one_encoded_packet():
    r = make_router()
    subs = []
    for i in range(3):
        s = Peer(r, V4)
        s.connect(f"s{i}")
        s.subscribe("f/#")
        s.raw_output()
        subs.append(s)
    p = Peer(r, V4)
    p.connect("p")
    p.publish("f/1", b"payload")
    chunks = [s.proto.out[0] for s in subs]
    assert chunks[0] is chunks[1] is chunks[2]
    assert chunks[0] == encode(Publish("f/1", b"payload"), 4)


def test_sys_topics_are_published_on_tick():
    r = make_router(sys_interval=10)
    r.start(0.0)
    s = Peer(r, V4)
    s.connect("s")
    s.subscribe("$SYS/#")
    assert r.tick(0.0) == 10.0
    got = {m.topic: m.payload for m in s.received()}
    assert got["$SYS/broker/clients/connected"] == b"1"
    assert got["$SYS/broker/subscriptions/count"] == b"1"
    assert got["$SYS/broker/version"].startswith(b"kefu ")
    for k in ("messages/received", "messages/sent", "bytes/received", "bytes/sent", "messages/dropped", "uptime"):
        assert f"$SYS/broker/{k}" in got


def test_malformed_packet_5_0_disconnect_0x81_and_counted():
    r = make_router()
    p = Peer(r, V5)
    p.connect("p")
    assert p.send_bytes(b"\x30\x01\x00") == [Disconnect(0x81)]
    assert p.closed and r.stats.malformed == 1


def test_oversized_packet_is_0x95_before_buffering():
    r = make_router(max_packet_size=100)
    p = Peer(r, V5)
    p.connect("p")
    assert p.send_bytes(b"\x30\xff\x7f") == [Disconnect(0x95)]


def test_5_0_client_maximum_packet_size_respected():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s", maximum_packet_size=50)
    s.subscribe("t")
    p = Peer(r, V5)
    p.connect("p")
    p.publish("t", b"x" * 100)
    p.publish("t", b"small")
    assert [m.payload for m in s.received()] == [b"small"]
    assert MQTT_5 == 5


def test_outbound_topic_aliases_up_to_the_client_maximum():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s", topic_alias_maximum=1)
    s.subscribe("t/+", qos=1)
    p = Peer(r, V5)
    p.connect("p")
    for topic in ("t/a", "t/a", "t/b", "t/a"):
        p.publish(topic, topic.encode(), qos=1, pid=1)
    got = s.received()
    assert [(m.topic, m.properties.topic_alias) for m in got] == [
        ("t/a", 1), ("", 1), ("t/b", None), ("", 1)]


def test_outbound_aliases_not_carried_into_a_resumed_session():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s", clean=False, session_expiry_interval=60, topic_alias_maximum=4)
    s.subscribe("t", qos=1)
    p = Peer(r, V5)
    p.connect("p")
    p.publish("t", b"1", qos=1, pid=1)
    p.publish("t", b"2", qos=1, pid=2)
    assert [m.topic for m in s.received()] == ["t", ""]
    s.proto.connection_lost(1.0)
    back = Peer(r, V5)
    back.connect("s", clean=False, session_expiry_interval=60)
    assert [(m.topic, m.dup, m.properties.topic_alias) for m in back.pending] == [("t", True, None), ("t", True, None)]


def test_retain_off_3_1_1_delivers_but_does_not_keep():
    r = make_router(retain_available=False)
    s = Peer(r, V4)
    s.connect("s")
    s.subscribe("t")
    p = Peer(r, V4)
    p.connect("p")
    assert [m.payload for m in p.publish("t", b"x", retain=True) + s.received()] == [b"x"]
    assert r.retained.count == 0


def test_plans_follow_subscription_changes():
    """The cached subscriber list of a topic changes with (un)subscribes, plain or wildcard."""
    r = make_router()
    p = Peer(r, V4)
    p.connect("p")
    a = Peer(r, V4)
    a.connect("a")
    b = Peer(r, V4)
    b.connect("b")
    got = {"a": [], "b": []}

    def publish(payload):
        p.publish("x/y", payload)
        got["a"] += a.received()
        got["b"] += b.received()

    publish(b"0")  # caches an empty plan for x/y
    a.subscribe("x/y")
    publish(b"1")
    b.subscribe("x/+")
    publish(b"2")
    got["a"] += a.send(Unsubscribe(2, ("x/y",)))
    publish(b"3")
    got["b"] += b.send(Disconnect())
    publish(b"4")
    assert [m.payload for m in got["a"] if isinstance(m, Publish)] == [b"1", b"2"]
    assert [m.payload for m in got["b"] if isinstance(m, Publish)] == [b"2", b"3"]


def test_inject_publishes_from_inside_kefu():
    r = make_router()
    s = Peer(r, V5)
    s.connect("s")
    s.subscribe("desk/#", qos=1)
    assert r.inject("desk/reply", b"hello", 0.0, qos=1, retain=True,
                    properties=Properties(content_type="text/plain")) == 0
    [m] = s.received()
    assert (m.topic, m.payload, m.qos, m.properties.content_type) == ("desk/reply", b"hello", 1, "text/plain")
    assert r.retained.get("desk/reply").payload == b"hello"
    assert r.inject("nobody/here", b"x", 0.0) == 0x10
    with pytest.raises(ValueError):
        r.inject("bad/+", b"x", 0.0)


# --------------------------------------------------------------------------- in-process consumers, scoped hooks


def test_tap_gets_its_topics_once_and_nothing_else():
    r = make_router()
    seen = []
    tap = r.add_tap(["desk/+/in", "desk/#"], lambda m: seen.append(m.topic))
    sub = Peer(r, V5)
    sub.connect("s")
    sub.subscribe("#")
    pub = Peer(r, V5)
    pub.connect("p")
    pub.publish("desk/a/in", b"1")
    pub.publish("other/x", b"2")
    assert seen == ["desk/a/in"]  # two of its filters match: one call
    assert [m.topic for m in sub.received()] == ["desk/a/in", "other/x"]
    r.remove_tap(tap)
    pub.publish("desk/a/in", b"3")
    assert seen == ["desk/a/in"]


def test_scoped_authorize_hook_is_asked_only_about_its_topics_and_other_decisions_are_cached():
    from kefu.broker.hooks import DENY

    r = make_router()
    asked = []

    def desk(e):
        asked.append((e.client_id, e.action, e.topic))
        return DENY if e.client_id == "evil" and e.topic.startswith("desk/") else None

    r.hooks.register("on_authorize", desk, topics=["desk/#"])
    evil = Peer(r, V5)
    evil.connect("evil")
    out = evil.subscribe("#", "desk/#")
    assert out[0] == SubAck(1, (0, 0x87))  # '#' may read other topics; 'desk/#' nothing
    assert asked == [("evil", "subscribe", "#"), ("evil", "subscribe", "desk/#")]
    asked.clear()
    pub = Peer(r, V5)
    pub.connect("p")
    for _ in range(3):
        pub.publish("other/x", b"o")
        pub.publish("desk/a", b"d")
    # outside its scope the hook is never asked; inside, publishes are asked every time
    # (its answers may change) and the delivery check once per client and topic
    assert sorted(set(asked)) == [("evil", "subscribe", "desk/a"), ("p", "publish", "desk/a")]
    assert asked.count(("p", "publish", "desk/a")) == 3
    assert asked.count(("evil", "subscribe", "desk/a")) == 1
    assert [m.topic for m in evil.received()] == ["other/x"] * 3


def test_cached_read_decisions_follow_hook_changes_and_reconnects():
    from kefu.broker.hooks import DENY

    r = make_router()
    s = Peer(r, V5)
    s.connect("s")
    s.subscribe("#")
    r.inject("news/x", b"1", 0.0)
    assert [m.payload for m in s.received()] == [b"1"]

    def no_news_for_s(e):
        return DENY if e.client_id == "s" and e.topic.startswith("news/") else None

    r.hooks.register("on_authorize", no_news_for_s)  # the cached plan must not outlive it
    r.inject("news/x", b"2", 0.0)
    r.inject("other", b"3", 0.0)
    assert [m.payload for m in s.received()] == [b"3"]
    r.hooks.unregister("on_authorize", no_news_for_s)
    r.inject("news/x", b"4", 0.0)
    assert [m.payload for m in s.received()] == [b"4"]


def test_persistent_session_resumed_under_another_user_gets_its_own_read_decisions():
    r = make_router(auth_acl=[{"action": "subscribe", "topic": "home/%u/#"},
                              {"action": "subscribe", "topic": "#", "permission": "deny"}])
    bob = Peer(r, V5)
    bob.connect("dev", clean=False, session_expiry_interval=3600, username="bob")
    bob.subscribe("home/#")
    r.inject("home/bob/door", b"b", 0.0)
    r.inject("home/eve/door", b"e", 0.0)
    assert [m.payload for m in bob.received()] == [b"b"]
    bob.proto.connection_lost(0.0)
    eve = Peer(r, V5)
    # a session is never handed to another identity (issue 12): eve starts afresh under the
    # same client id, and her read decisions are her own, not bob's cached ones
    assert not eve.connect("dev", clean=False, session_expiry_interval=3600, username="eve").session_present
    eve.subscribe("home/#")
    r.inject("home/bob/door", b"b2", 0.0)
    r.inject("home/eve/door", b"e2", 0.0)
    assert [m.payload for m in eve.received()] == [b"e2"]
