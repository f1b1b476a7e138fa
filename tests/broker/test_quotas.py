"""Issue 12, item 6: an anonymous client cannot fill memory or disk.

Real paho clients against the broker with small quotas: retained count, retained bytes,
retained payload size, subscriptions per client, persistent sessions and stored bytes each answer
0x97 (quota exceeded) past their limit -- in the PUBACK, SUBACK or CONNACK, so the
client is told why -- and nothing beyond the limit is kept.
"""

from __future__ import annotations

from realclients import KefuThread, Paho, broker_config

QUOTA = 0x97
OK = (0x00, 0x10)  # 5.0 PUBACK: success, or "no matching subscribers" (still accepted)


def broker(**mqtt):
    return KefuThread(broker_config(**mqtt)).start()


def test_retained_count_bytes_and_size():
    k = broker(max_retained_messages=3, max_retained_bytes=100, max_retained_payload=40)
    try:
        c = Paho(k.port, "filler", version=5)
        assert c.connect()[1] == 0
        assert all(c.publish(f"r/{i}", b"x" * 10, qos=1, retain=True) in OK for i in range(3))
        assert c.publish("r/3", b"x", qos=1, retain=True) == QUOTA  # a 4th topic
        assert c.publish("r/0", b"y" * 30, qos=1, retain=True) in OK  # replacing one is fine
        assert c.publish("r/1", b"z" * 41, qos=1, retain=True) == QUOTA  # too large for one
        assert c.publish("r/1", b"z" * 40, qos=1, retain=True) in OK
        assert c.publish("r/2", b"w" * 40, qos=1, retain=True) == QUOTA  # 30 + 40 + 40 > 100 bytes
        assert c.publish("r/2", b"", qos=1, retain=True) in OK  # clearing always works
        assert c.publish("r/9", b"ok", qos=1, retain=True) in OK
        assert c.publish("plain", b"not retained is not counted" * 10, qos=1) in OK
        c.disconnect()
        r = k.call(lambda: (k.router.retained.count, k.router.retained.bytes, dict(k.router.quota_refused)))
        assert r == (3, 72, {"retained": 3, "subscriptions": 0, "sessions": 0, "stored_bytes": 0})
        v3 = Paho(k.port, "old-client", version=4)  # 3.1.1: no reason code; nothing is retained
        assert v3.connect()[1] == 0
        v3.publish("r/10", b"x", qos=1, retain=True)
        v3.disconnect()
        assert k.call(lambda: k.router.retained.get("r/10")) is None
    finally:
        k.stop()


def test_subscriptions_per_client():
    k = broker(max_subscriptions_per_client=3)
    try:
        c = Paho(k.port, "subber", version=5)
        assert c.connect()[1] == 0
        assert [c.subscribe(f"s/{i}", qos=1)[0] for i in range(3)] == [1, 1, 1]
        assert c.subscribe("s/3", qos=1) == [QUOTA]
        assert c.subscribe("s/0", qos=0) == [0]  # changing one it holds is fine
        c.disconnect()
        v3 = Paho(k.port, "subber3", version=4)
        assert v3.connect()[1] == 0
        assert [v3.subscribe(f"t/{i}", qos=1)[0] for i in range(4)] == [1, 1, 1, 0x80]
        v3.disconnect()
    finally:
        k.stop()


def test_persistent_sessions():
    k = broker(max_persistent_sessions=2)
    try:
        for i in range(2):
            c = Paho(k.port, f"keep-{i}", version=5, clean=False, session_expiry=3600)
            assert c.connect()[1] == 0
            c.disconnect()
        extra = Paho(k.port, "keep-2", version=5, clean=False, session_expiry=3600)
        assert extra.connect()[1] == QUOTA
        extra.disconnect()
        again = Paho(k.port, "keep-0", version=5, clean=False, session_expiry=3600)  # resuming is fine
        flags, rc = again.connect()
        assert rc == 0 and flags.session_present
        again.disconnect()
        brief = Paho(k.port, "brief", version=5)  # a session that ends with its connection is fine
        assert brief.connect()[1] == 0
        brief.disconnect()
        old = Paho(k.port, "keep-v3", version=4, clean=False)  # 3.1.1 clean session 0: return code 3
        assert str(old.connect()[1]) == "Server unavailable"
        old.disconnect()
    finally:
        k.stop()


def test_stored_bytes_per_session_and_per_publisher():
    """mqtt.max_queued_stored_bytes: an offline session's queue is bounded in bytes (the drop
    policy, counted), and a publisher with that much waiting in queues gets 0x97."""
    k = broker(max_queued_stored_bytes=1000, max_offline_messages=1000)
    try:
        sub = Paho(k.port, "away", version=5, clean=False, session_expiry=3600)
        assert sub.connect()[1] == 0
        assert sub.subscribe("q/#", qos=1) == [1]
        sub.disconnect()
        a = Paho(k.port, "pub-a", version=5)
        assert a.connect()[1] == 0
        assert [a.publish("q/a", f"A{i}".encode() * 150, qos=1) for i in range(1, 4)] == [0, 0, 0]
        assert a.publish("q/a", b"A4" * 150, qos=1) == QUOTA  # 900 + 300 bytes waiting > 1000
        b = Paho(k.port, "pub-b", version=4)  # 3.1.1: acknowledged, and past the quota dropped
        assert b.connect()[1] == 0
        for i in range(1, 5):
            b.publish("q/b", f"B{i}".encode() * 150, qos=1)  # each of B1-B3 pushes out the oldest
        b.disconnect()
        r = k.call(lambda: (k.router.stats.dropped, dict(k.router.quota_refused),
                            k.router.sessions["away"].queued_bytes, dict(k.router.stats.held_by_origin)))
        assert r == (3, {"retained": 0, "subscriptions": 0, "sessions": 0, "stored_bytes": 2}, 900, {"pub-b": 900})
        back = Paho(k.port, "away", version=5, clean=False, session_expiry=3600)
        flags, rc = back.connect()
        assert rc == 0 and flags.session_present
        got = [back.get().payload[:2] for _ in range(3)]
        assert got == [b"B1", b"B2", b"B3"]
        assert a.publish("q/a", b"end", qos=1) == 0  # what was waiting went out: room again
        assert back.get().payload == b"end"
        assert k.call(lambda: dict(k.router.stats.held_by_origin)) == {}
        a.disconnect()
        back.disconnect()
    finally:
        k.stop()


def test_memory_is_given_back_on_glibc():
    """The housekeeping trim (kefu.broker.server.trim_memory) works where glibc is the libc."""
    import platform

    from kefu.broker.server import trim_memory

    assert trim_memory() is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
