"""Issue 12, item 5: logins are bounded, backed off per source and per user, cached, counted.

Unit tests drive ``Authenticator`` with an injected clock; the broker test sends real
parallel bad logins with paho and checks that at most ``auth.max_concurrent_hashes``
password checks ever ran at once while a good client still gets in.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from kefu.broker.auth import (
    BAD_USER_NAME_OR_PASSWORD,
    CONNECTION_RATE_EXCEEDED,
    SUCCESS,
    Authenticator,
    LoginThrottle,
    hash_password,
)
from kefu.config.model import Auth, User

from realclients import KefuThread, Paho, broker_config

PW = "right-password"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def authenticator(clock: Clock, **kw) -> Authenticator:
    cfg = Auth(users=[User("dev", hash_password(PW, log_n=4)), User("other", hash_password(PW, log_n=4))], **kw)
    a = Authenticator(cfg)
    a.throttle.clock = clock
    return a


def test_back_off_per_source_after_the_free_failures():
    clock = Clock()
    a = authenticator(clock, login_free_failures=3, login_backoff_max=8.0)
    peer = "203.0.113.9:5000"
    for _ in range(3):
        assert a.authenticate("c", "dev", b"wrong", peer=peer) == BAD_USER_NAME_OR_PASSWORD
    # the 4th failure closes the source for 1 s ...
    assert a.authenticate("c", "dev", b"wrong", peer=peer) == BAD_USER_NAME_OR_PASSWORD
    assert a.authenticate("c", "other", b"wrong", peer="203.0.113.9:5001") == CONNECTION_RATE_EXCEEDED
    # ... even the right password of a user never seen before waits (no scrypt is run)
    assert a.authenticate("c", "other", PW.encode(), peer="203.0.113.9:6000") == CONNECTION_RATE_EXCEEDED
    clock.t += 1.01
    assert a.authenticate("c", "other", PW.encode(), peer="203.0.113.9:6000") == SUCCESS
    assert a.failures["bad_password"] == 4 and a.failures["throttled"] == 2


def test_back_off_per_user_name_does_not_lock_out_the_owner():
    clock = Clock()
    a = authenticator(clock, login_free_failures=2, login_backoff_max=60.0)
    assert a.authenticate("c", "dev", PW.encode(), peer="198.51.100.1:1") == SUCCESS  # the owner, once
    for i in range(6):  # an attacker from many addresses
        a.authenticate("x", "dev", b"guess%d" % i, peer=f"192.0.2.{i}:1")
    assert a.authenticate("x", "dev", b"guess", peer="192.0.2.200:1") == CONNECTION_RATE_EXCEEDED
    # the owner's password matches the cached successful check: in, without scrypt
    hits = a.cache_hits
    assert a.authenticate("c", "dev", PW.encode(), peer="198.51.100.1:2") == SUCCESS
    assert a.cache_hits == hits + 1


def test_back_off_grows_and_is_capped():
    clock = Clock()
    t = LoginThrottle(free=0, max_delay=4.0, clock=clock)
    key = ("src", "h")
    waits = []
    for _ in range(5):
        t.failed(key)
        start = clock.t
        while t.closed(key):
            clock.t += 0.25
        waits.append(clock.t - start)
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    t.succeeded(key)
    assert not t.closed(key)


def test_parallel_bad_logins_are_bounded_and_a_good_client_still_gets_in():
    cfg = broker_config()
    cfg.auth.users = [User("dev", hash_password(PW))]  # the real cost (log2 N = 14)
    cfg.auth.max_concurrent_hashes = 2
    cfg.auth.login_free_failures = 1000  # measure the bound, not the back-off
    k = KefuThread(cfg).start()
    try:
        pa = k.app.broker.router.password_auth
        real = pa.authenticate
        lock = threading.Lock()
        now = {"n": 0, "max": 0}

        def counting(*a, **kw):
            with lock:
                now["n"] += 1
                now["max"] = max(now["max"], now["n"])
            try:
                return real(*a, **kw)
            finally:
                with lock:
                    now["n"] -= 1

        pa.authenticate = counting

        def bad(i):
            c = Paho(k.port, f"bad-{i}", version=5, username="dev", password=f"nope-{i}")
            try:
                return c.connect()[1]
            finally:
                c.disconnect()

        with ThreadPoolExecutor(16) as ex:
            codes = list(ex.map(bad, range(16)))
        assert all(rc == BAD_USER_NAME_OR_PASSWORD for rc in codes), codes
        assert now["max"] <= 2, now
        good = Paho(k.port, "good", version=5, username="dev", password=PW)
        assert good.connect()[1] == 0
        good.disconnect()
        assert pa.failures["bad_password"] == 16
    finally:
        k.stop()
