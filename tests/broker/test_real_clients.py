"""Real clients over real sockets: paho-mqtt (3.1.1 and 5.0) and gmqtt against kefu on port 0.

The broker runs the whole app (``kefu.app.run``) in a background thread. Tests wait
on events with time limits; "nothing else arrived" is shown by a marker message
published after the thing that must not arrive (per-topic order is guaranteed).
"""

from __future__ import annotations

import asyncio
import datetime
import socket

import pytest
from realclients import WAIT, KefuThread, Paho, broker_config

from kefu.config.model import AclRule


@pytest.fixture(scope="module")
def kefu():
    k = KefuThread(broker_config()).start()
    yield k
    k.stop()


V = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


def _ids(prefix, version):
    return f"{prefix}-v{version}"


@pytest.mark.parametrize("version", V)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_publish_subscribe(kefu, version, qos):
    sub = Paho(kefu.port, _ids(f"sub{qos}", version), version)
    sub.connect()
    assert sub.subscribe(f"pq/{version}/{qos}/#", qos=2) == [2]
    pub = Paho(kefu.port, _ids(f"pub{qos}", version), version)
    pub.connect()
    for i in range(20):
        pub.publish(f"pq/{version}/{qos}/x", b"m%d" % i, qos=qos)
    got = [sub.get() for _ in range(20)]
    assert [m.payload for m in got] == [b"m%d" % i for i in range(20)]
    assert {m.qos for m in got} == {qos}
    pub.disconnect()
    sub.disconnect()


@pytest.mark.parametrize("version", V)
def test_paho_retained(kefu, version):
    topic = f"ret/{version}/state"
    pub = Paho(kefu.port, _ids("rpub", version), version)
    pub.connect()
    pub.publish(topic, b"on", qos=1, retain=True)
    sub = Paho(kefu.port, _ids("rsub", version), version)
    sub.connect()
    sub.subscribe(f"ret/{version}/#", qos=1)
    m = sub.get()
    assert (m.topic, m.payload, m.retain) == (topic, b"on", True)
    pub.publish(topic, b"", qos=1, retain=True)  # clears
    assert sub.get().payload == b""
    sub2 = Paho(kefu.port, _ids("rsub2", version), version)
    sub2.connect()
    sub2.subscribe(f"ret/{version}/#")
    pub.publish(f"ret/{version}/marker", b"marker")
    assert sub2.get().payload == b"marker"  # nothing retained came first
    for c in (pub, sub, sub2):
        c.disconnect()


@pytest.mark.parametrize("version", V)
def test_paho_will_on_broken_connection_not_on_disconnect(kefu, version):
    watch = Paho(kefu.port, _ids("wwatch", version), version)
    watch.connect()
    watch.subscribe(f"wills/{version}/#", qos=1)
    polite = Paho(kefu.port, _ids("polite", version), version, will=(f"wills/{version}/polite", b"x", 1, False))
    polite.connect()
    polite.disconnect()
    rude = Paho(kefu.port, _ids("rude", version), version, will=(f"wills/{version}/rude", b"gone", 1, False))
    rude.connect()
    rude.drop()
    m = watch.get()
    assert (m.topic, m.payload) == (f"wills/{version}/rude", b"gone")  # polite's will never came
    watch.disconnect()


@pytest.mark.parametrize("version", V)
def test_paho_persistent_session_gets_offline_messages(kefu, version):
    cid = _ids("persist", version)
    sub = Paho(kefu.port, cid, version, clean=False, session_expiry=300)
    sub.connect()
    sub.subscribe(f"off/{version}/#", qos=1)
    sub.disconnect()
    pub = Paho(kefu.port, _ids("offpub", version), version)
    pub.connect()
    for i in range(5):
        pub.publish(f"off/{version}/t", b"o%d" % i, qos=1)
    back = Paho(kefu.port, cid, version, clean=False, session_expiry=300)
    flags, rc = back.connect()
    assert flags.session_present
    assert [back.get().payload for _ in range(5)] == [b"o%d" % i for i in range(5)]
    back.disconnect()
    pub.disconnect()


def test_paho_shared_subscription_round_robin(kefu):
    members = [Paho(kefu.port, f"share{i}", 5) for i in range(2)]
    for m in members:
        m.connect()
        m.subscribe("$share/workers/jobs/#", qos=1)
    pub = Paho(kefu.port, "sharepub", 5)
    pub.connect()
    for i in range(10):
        pub.publish("jobs/new", b"j%d" % i, qos=1)
    a = [members[0].get().payload for _ in range(5)]
    b = [members[1].get().payload for _ in range(5)]
    assert sorted(a + b) == sorted(b"j%d" % i for i in range(10))
    for m in members + [pub]:
        m.disconnect()


@pytest.mark.parametrize("version", V)
def test_paho_takeover(kefu, version):
    old = Paho(kefu.port, _ids("twin", version), version, loop=False)
    old.connect()
    new = Paho(kefu.port, _ids("twin", version), version)
    new.connect()
    rc = old.pump(old.disconnects)  # the old connection is closed by the broker
    if version == 5:
        assert rc.value == 0x8E
    new.subscribe("take/over")
    new.publish("take/over", b"alive")
    assert new.get().payload == b"alive"
    new.disconnect()


def test_malformed_client_does_not_disturb_others(kefu):
    sub = Paho(kefu.port, "calm", 4)
    sub.connect()
    sub.subscribe("calm/#")
    with socket.create_connection(("127.0.0.1", kefu.port)) as s:
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # a valid CONNECT
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(b"\x30\x04\x00\x09ab")  # topic longer than the packet
        assert s.recv(10) == b""  # 3.1.1: plain close
    pub = Paho(kefu.port, "calmpub", 4)
    pub.connect()
    pub.publish("calm/x", b"fine", qos=1)
    assert sub.get().payload == b"fine"
    sub.disconnect()
    pub.disconnect()


# --------------------------------------------------------------------------- ACL


@pytest.fixture(scope="module")
def kefu_acl():
    cfg = broker_config()
    cfg.auth.acl = [
        AclRule(action="subscribe", topic="secret/#", permission="deny"),
        AclRule(action="publish", topic="devices/%c/#", permission="allow"),
        AclRule(action="publish", topic="#", permission="deny"),
    ]
    k = KefuThread(cfg).start()
    yield k
    k.stop()


def test_acl_subscribe_denied(kefu_acl):
    c4 = Paho(kefu_acl.port, "acl4", 4)
    c4.connect()
    assert c4.subscribe("secret/a", qos=1) == [0x80]
    c5 = Paho(kefu_acl.port, "acl5", 5)
    c5.connect()
    assert c5.subscribe("secret/a", qos=1) == [0x87]
    assert c5.subscribe("devices/#", qos=1) == [1]
    c4.disconnect()
    c5.disconnect()


def test_acl_publish_denied(kefu_acl):
    watch = Paho(kefu_acl.port, "aclwatch", 5)
    watch.connect()
    watch.subscribe("devices/#", qos=1)
    d4 = Paho(kefu_acl.port, "d4", 4)
    d4.connect()
    d4.publish("devices/other/x", b"not mine", qos=1)  # 3.1.1: acknowledged, dropped
    d4.publish("devices/d4/x", b"mine", qos=1)
    assert watch.get().payload == b"mine"
    d5 = Paho(kefu_acl.port, "d5", 5)
    d5.connect()
    rc = d5.publish("devices/other/x", b"not mine", qos=1)
    assert rc.value == 0x87
    d5.publish("devices/d5/x", b"mine too", qos=1)
    assert watch.get().payload == b"mine too"
    for c in (watch, d4, d5):
        c.disconnect()


@pytest.fixture(scope="module")
def kefu_nosubscribe():
    cfg = broker_config()
    cfg.auth.acl = [AclRule(action="subscribe", topic="test/nosubscribe", permission="deny")]
    k = KefuThread(cfg).start()
    yield k
    k.stop()


@pytest.mark.parametrize("version", V)
def test_acl_deny_rule_leaves_wildcards_granted_and_withholds_the_topic(kefu_nosubscribe, version):
    """Mosquitto's semantics: '#' and '+/+' are granted and receive every allowed topic;
    the denied one never arrives, neither live nor retained."""
    port = kefu_nosubscribe.port
    pub = Paho(port, _ids("ns-pub", version), version)
    pub.connect()
    pub.publish("test/nosubscribe", b"old secret", qos=1, retain=True)
    pub.publish("test/retained", b"old news", qos=1, retain=True)
    subs = {}
    for f in ("#", "+/+"):
        c = Paho(port, _ids(f"ns-sub{len(subs)}", version), version)
        c.connect()
        assert c.subscribe(f, qos=1) == [1], f
        subs[f] = c
    refused = 0x80 if version == 4 else 0x87
    assert subs["#"].subscribe("test/nosubscribe", qos=1) == [refused]
    for i in range(3):
        pub.publish("test/nosubscribe", b"secret %d" % i, qos=1)
        pub.publish("test/ok", b"ok %d" % i, qos=1)
    pub.publish("test/end", b"marker", qos=1)
    for f, c in subs.items():
        got = []
        while not got or got[-1] != ("test/end", b"marker"):
            m = c.get()
            got.append((m.topic, m.payload))
        assert ("test/retained", b"old news") in got, f
        assert [p for t, p in got if t == "test/ok"] == [b"ok 0", b"ok 1", b"ok 2"], f
        assert not [t for t, _ in got if t == "test/nosubscribe"], f
    pub.publish("test/nosubscribe", b"", qos=1, retain=True)
    pub.publish("test/retained", b"", qos=1, retain=True)
    for c in [pub, *subs.values()]:
        c.disconnect()


def test_max_keepalive_caps_and_tells_5_0_clients():
    k = KefuThread(broker_config(max_keepalive=60)).start()
    try:
        c5 = Paho(k.port, "ka5", 5)
        assert c5.connect(keepalive=120)[1] == 0
        assert c5.connack_properties.ServerKeepAlive == 60
        c5b = Paho(k.port, "ka5b", 5)
        assert c5b.connect(keepalive=30)[1] == 0
        assert not hasattr(c5b.connack_properties, "ServerKeepAlive")  # within the cap: nothing to say
        c4 = Paho(k.port, "ka4", 4)
        assert c4.connect(keepalive=30)[1] == 0
        c4b = Paho(k.port, "ka4b", 4, loop=False)
        assert c4b.connect(keepalive=120)[1] != 0  # 3.1.1 cannot be told: refused, as Mosquitto does
        for c in (c5, c5b, c4):
            c.disconnect()
    finally:
        k.stop()


@pytest.mark.parametrize("version", V)
def test_qos1_publisher_is_slowed_not_dropped_for_an_acknowledging_subscriber(version, monkeypatch):
    """A publisher far ahead of an online QoS 1 subscriber that keeps acknowledging is
    paused (its socket unread) instead of the broker dropping what it acknowledged."""
    from kefu.broker import connection, router

    # "stopped acknowledging" is judged on time; make it irrelevant on a busy machine
    monkeypatch.setattr(connection, "PAUSE_CHECK", 60.0)
    monkeypatch.setattr(router, "ACK_RECENT", 60.0)
    k = KefuThread(broker_config(max_offline_messages=20)).start()
    try:
        sub = Paho(k.port, _ids("bp-sub", version), version)
        sub.connect()
        assert sub.subscribe("bp/t", qos=1) == [1]
        pub = Paho(k.port, _ids("bp-pub", version), version)
        pub.c.max_inflight_messages_set(0)  # no client-side window: it sends all at once
        pub.connect()
        n = 2000
        infos = [pub.c.publish("bp/t", b"%d" % i, qos=1) for i in range(n)]
        got = [sub.get().payload for _ in range(n)]
        assert got == [b"%d" % i for i in range(n)]
        for info in infos:
            info.wait_for_publish(WAIT)
        stats = k.call(lambda: k.router.stats)
        assert stats.dropped == 0
        assert stats.throttled > 0
        pub.disconnect()
        sub.disconnect()
    finally:
        k.stop()


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)


def test_paho_over_tls(tls_files):
    cfg = broker_config()
    cfg.listeners.mqtts.enabled = True
    cfg.listeners.mqtts.host = "127.0.0.1"
    cfg.listeners.mqtts.port = 0
    cfg.listeners.mqtts.certfile, cfg.listeners.mqtts.keyfile = tls_files
    k = KefuThread(cfg).start()
    try:
        assert {a.scheme for a in k.app.addresses} == {"mqtt", "mqtts"}
        sub = Paho(k.tls_port, "tls-sub", 5, tls_ca=tls_files[0], host="localhost")
        sub.connect()
        sub.subscribe("tls/#", qos=1)
        pub = Paho(k.tls_port, "tls-pub", 4, tls_ca=tls_files[0], host="localhost")
        pub.connect()
        pub.publish("tls/x", b"secret", qos=1)
        assert sub.get().payload == b"secret"
        pub.disconnect()
        sub.disconnect()
    finally:
        k.stop()


# --------------------------------------------------------------------------- gmqtt


def _gmqtt_run(coro_fn):
    return asyncio.run(asyncio.wait_for(coro_fn(), WAIT))


async def _gclient(port, cid, version, **kw):
    import gmqtt

    c = gmqtt.Client(cid, **kw)
    c.reconnect_retries = 0
    inbox: asyncio.Queue = asyncio.Queue()

    def on_message(client, topic, payload, qos, properties):
        inbox.put_nowait((topic, payload, qos, properties))
        return 0

    c.on_message = on_message
    c.subacks = asyncio.Queue()
    c.on_subscribe = lambda client, mid, qos, properties: c.subacks.put_nowait(qos)
    await c.connect("127.0.0.1", port, version=version)
    return c, inbox


async def _subscribe(c, topic, qos=0):
    c.subscribe(topic, qos=qos)
    return await c.subacks.get()


@pytest.mark.parametrize("version", V)
def test_gmqtt_qos_and_retained(kefu, version):
    from gmqtt.mqtt.constants import MQTTv50, MQTTv311

    gv = MQTTv50 if version == 5 else MQTTv311

    async def scenario():
        pub, echo = await _gclient(kefu.port, _ids("gpub", version), gv)
        await _subscribe(pub, f"g/{version}/retained")
        pub.publish(f"g/{version}/retained", b"kept", qos=1, retain=True)
        await echo.get()  # the broker has it
        sub, inbox = await _gclient(kefu.port, _ids("gsub", version), gv)
        await _subscribe(sub, f"g/{version}/#", qos=2)
        topic, payload, qos, props = await inbox.get()
        assert (topic, payload) == (f"g/{version}/retained", b"kept")
        for q in (0, 1, 2):
            pub.publish(f"g/{version}/q{q}", b"q%d" % q, qos=q)
        got = [await inbox.get() for _ in range(3)]
        assert [(t, p, q) for t, p, q, _ in got] == [(f"g/{version}/q{q}", b"q%d" % q, q) for q in (0, 1, 2)]
        pub.publish(f"g/{version}/retained", b"", qos=1, retain=True)
        await inbox.get()
        await pub.disconnect()
        await sub.disconnect()

    _gmqtt_run(scenario)


def test_gmqtt_will_and_user_properties(kefu):
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv50

    async def scenario():
        watch, inbox = await _gclient(kefu.port, "gwatch", MQTTv50)
        await _subscribe(watch, "gw/#", qos=1)
        pub, _ = await _gclient(kefu.port, "gprops", MQTTv50)
        pub.publish("gw/props", b"{}", qos=1, content_type="application/json", user_property=[("k", "v")])
        topic, payload, qos, props = await inbox.get()
        assert topic == "gw/props" and props["content_type"] == ["application/json"]
        assert ("k", "v") in props["user_property"]
        will = gmqtt.Message("gw/will", b"bye", qos=1)
        dying, _ = await _gclient(kefu.port, "gdying", MQTTv50, will_message=will)
        dying._connection._transport.abort()
        topic, payload, qos, props = await inbox.get()
        assert (topic, payload) == ("gw/will", b"bye")
        await pub.disconnect()
        await watch.disconnect()

    _gmqtt_run(scenario)


# --------------------------------------------------------------------------- authentication


@pytest.fixture(scope="module")
def kefu_users():
    from kefu.broker.auth import hash_password
    from kefu.config.model import User

    cfg = broker_config()
    cfg.auth.allow_anonymous = False
    cfg.auth.users = [User(username="alice", password_hash=hash_password("wonderland"))]
    k = KefuThread(cfg).start()
    yield k
    k.stop()


@pytest.mark.parametrize("version", V)
def test_username_password_checked_off_the_event_loop(kefu_users, version):
    """scrypt runs in a worker thread; the CONNECT completes afterwards, packets sent
    right behind it (here a SUBSCRIBE and a PUBLISH) are processed in order."""
    ok = Paho(kefu_users.port, _ids("alice", version), version, username="alice", password="wonderland")
    flags, rc = ok.connect()
    assert rc == 0
    assert ok.subscribe("auth/t", qos=1) == [1]
    ok.publish("auth/t", b"hi", qos=1)
    assert ok.get().payload == b"hi"
    ok.disconnect()
    bad = Paho(kefu_users.port, _ids("mallory", version), version, username="alice", password="guess", loop=False)
    flags, rc = bad.connect()
    assert rc.value == 0x86  # 3.1.1 return code 4, which paho reports as 0x86
    anon = Paho(kefu_users.port, _ids("anon", version), version, loop=False)
    flags, rc = anon.connect()
    assert rc.value == 0x87  # 3.1.1 return code 5


def test_authenticate_hooks_run_on_the_event_loop():
    """on_authenticate handlers run on the broker's trio thread even when passwords are
    checked in worker threads; a hook's denial wins, its abstention leaves it to the users."""
    import threading

    from kefu.broker.auth import hash_password
    from kefu.broker.hooks import Decision
    from kefu.config.model import User

    cfg = broker_config()
    cfg.auth.allow_anonymous = False
    cfg.auth.users = [User(username="bob", password_hash=hash_password("pw")),
                      User(username="banned", password_hash=hash_password("pw"))]
    k = KefuThread(cfg).start()
    seen = []

    def hook(ev):
        seen.append((ev.username, threading.current_thread().name))
        return Decision(False, 0x8A) if ev.username == "banned" else None

    try:
        k.call(lambda: k.app.broker.hooks.register("on_authenticate", hook))
        ok = Paho(k.port, "hook-bob", 5, username="bob", password="pw")
        assert ok.connect()[1] == 0
        ok.disconnect()
        no = Paho(k.port, "hook-banned", 5, username="banned", password="pw", loop=False)
        assert no.connect()[1].value == 0x8A
        assert seen == [("bob", "kefu-broker"), ("banned", "kefu-broker")]
    finally:
        k.stop()
