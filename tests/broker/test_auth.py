"""Password hashes, the Authenticator (users, anonymous, ordered ACL) and broker hooks."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kefu.broker import auth as auth_mod
from kefu.broker.auth import Authenticator, hash_password, parse_password_hash, verify_password
from kefu.broker.hooks import (
    ALLOW,
    DENY,
    AuthenticateEvent,
    AuthorizeEvent,
    ConnectedEvent,
    Decision,
    HookError,
    HookRegistry,
    load_plugins,
)
from kefu.config import load
from kefu.config.model import AclRule, Auth, User

# One real hash at the default cost for the round trip; cheap ones elsewhere.
FAST = dict(log_n=4)


@pytest.fixture(scope="module")
def alice_hash():
    return hash_password("wonderland", **FAST)


def make(acl=(), users=(), allow_anonymous=True, acl_default="allow", hooks=None):
    return Authenticator(
        Auth(allow_anonymous=allow_anonymous, users=list(users), acl=list(acl), acl_default=acl_default), hooks
    )


# ----------------------------------------------------------------- passwords


def test_hash_round_trip_default_cost():
    h = hash_password("correct horse")
    assert h.startswith("scrypt$14$8$1$")
    assert verify_password("correct horse", h)
    assert verify_password(b"correct horse", h)
    assert not verify_password("correct hors", h)
    assert hash_password("correct horse") != h  # random salt


def test_unicode_password():
    h = hash_password("密码🔑", **FAST)
    assert verify_password("密码🔑".encode(), h)
    assert not verify_password("密码", h)


@pytest.mark.parametrize(
    "bad",
    ["", "plain", "scrypt$14$8$1$abc", "bcrypt$14$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAA",
     "scrypt$x$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAA", "scrypt$40$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAA",
     "scrypt$20$32$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAA", "scrypt$14$8$1$!!!$AAAAAAAAAAAAAAAAAAAAAAA",
     "scrypt$14$8$1$AA$AAAAAAAAAAAAAAAAAAAAAAA"],
)
def test_malformed_hash_is_refused_not_crashing(bad):
    assert verify_password("x", bad) is False
    with pytest.raises(ValueError):
        parse_password_hash(bad)


def test_kefu_passwd_output_is_accepted_by_config(tmp_path, capsys):
    from kefu.cli import main

    assert main(["passwd", "s3cret"]) == 0
    h = capsys.readouterr().out.strip()
    cfg_file = tmp_path / "kefu.toml"
    cfg_file.write_text(f'[auth]\nallow_anonymous = false\n[[auth.users]]\nusername = "bob"\npassword_hash = "{h}"\n')
    a = Authenticator(load(cfg_file).auth)
    assert a.authenticate("c1", "bob", b"s3cret") == 0
    assert a.authenticate("c1", "bob", b"S3cret") == 0x86


# ----------------------------------------------------------------- authentication


def test_anonymous_on_and_off(alice_hash):
    assert make().authenticate("c", None, None) == 0
    assert make(allow_anonymous=False, users=[User("alice", alice_hash)]).authenticate("c", None, None) == 0x87


def test_users(alice_hash):
    a = make(allow_anonymous=False, users=[User("alice", alice_hash)])
    assert a.authenticate("c", "alice", b"wonderland") == 0
    assert a.authenticate("c", "alice", "wonderland") == 0
    assert a.authenticate("c", "alice", b"wrong") == 0x86
    assert a.authenticate("c", "alice", None) == 0x86
    assert a.authenticate("c", "mallory", b"wonderland") == 0x86
    # configured users are checked even when anonymous clients are allowed
    b = make(allow_anonymous=True, users=[User("alice", alice_hash)])
    assert b.authenticate("c", None, None) == 0
    assert b.authenticate("c", "alice", b"wrong") == 0x86
    assert b.authenticate("c", "mallory", b"x") == 0x86


def test_no_users_configured():
    assert make(allow_anonymous=True).authenticate("c", "anyone", b"x") == 0
    assert make(allow_anonymous=False).authenticate("c", "anyone", b"x") == 0x86


def test_repeat_login_skips_scrypt(alice_hash, monkeypatch):
    a = make(users=[User("alice", alice_hash)])
    assert a.authenticate("c", "alice", b"wonderland") == 0
    calls = []
    real = auth_mod._scrypt
    monkeypatch.setattr(auth_mod, "_scrypt", lambda *args: calls.append(1) or real(*args))
    assert a.authenticate("c2", "alice", b"wonderland") == 0
    assert calls == []
    # a different password is never accepted from the cache
    assert a.authenticate("c", "alice", b"wonderlanD") == 0x86
    assert calls == [1]


def test_unknown_user_costs_as_much_as_a_known_one(monkeypatch):
    """A wrong user name runs the same scrypt as a wrong password, so timing does not
    tell an attacker which user names exist."""
    h = hash_password("pw")
    a = make(users=[User("alice", h)])
    a._dummy()  # made once, lazily
    calls = []
    real = auth_mod._scrypt
    monkeypatch.setattr(auth_mod, "_scrypt", lambda pw, salt, *params: calls.append(params) or real(pw, salt, *params))
    assert a.authenticate("c", "alice", b"nope") == 0x86
    assert a.authenticate("c", "mallory", b"nope") == 0x86
    assert len(calls) == 2 and calls[0] == calls[1]  # same cost parameters, once each


@pytest.mark.parametrize(
    "users,acl,msg",
    [
        ([User("a", "plain")], [], r"auth.users\[0\].password_hash"),
        ([User("", "x")], [], r"auth.users\[0\].username"),
        ([User("a", None), User("a", None)], [], "listed twice"),
        ([], [AclRule(topic="a/#/b")], r"auth.acl\[0\].topic"),
        ([], [AclRule(topic="$share/g/a")], r"auth.acl\[0\].topic"),
        ([], [AclRule(action="read")], r"auth.acl\[0\].action"),
        ([], [AclRule(permission="maybe")], r"auth.acl\[0\].permission"),
    ],
)
def test_bad_config_names_the_key(users, acl, msg, alice_hash):
    users = [User(u.username, alice_hash if u.password_hash is None else u.password_hash) for u in users]
    with pytest.raises(ValueError, match=msg):
        make(users=users, acl=acl)


# ----------------------------------------------------------------- ACL


def test_no_rules_follows_default():
    assert make().authorize("c", None, "publish", "a/b")
    assert not make(acl_default="deny").authorize("c", None, "publish", "a/b")
    with pytest.raises(ValueError, match="action"):
        make().authorize("c", None, "read", "a")


def test_first_matching_rule_wins():
    a = make(
        acl=[
            AclRule(action="publish", topic="a/secret", permission="deny"),
            AclRule(action="all", topic="a/#", permission="allow"),
            AclRule(action="all", topic="#", permission="deny"),
        ],
        acl_default="allow",
    )
    assert not a.authorize("c", "u", "publish", "a/secret")
    assert a.authorize("c", "u", "publish", "a/public")
    assert a.authorize("c", "u", "subscribe", "a/secret")  # the deny rule is publish-only
    assert not a.authorize("c", "u", "publish", "b")
    # reordered: the allow comes first and wins
    b = make(acl=[AclRule(topic="a/#"), AclRule(action="publish", topic="a/secret", permission="deny")],
             acl_default="deny")
    assert b.authorize("c", "u", "publish", "a/secret")
    assert "auth.acl[0]" in b.explain("c", "u", "publish", "a/secret")
    assert "acl_default" in b.explain("c", "u", "publish", "z")


def test_qualifiers():
    a = make(
        acl=[
            AclRule(topic="admin/#", username="root"),
            AclRule(topic="cam/#", clientid="cam-1"),
        ],
        acl_default="deny",
    )
    assert a.authorize("x", "root", "publish", "admin/reboot")
    assert not a.authorize("x", "bob", "publish", "admin/reboot")
    assert not a.authorize("x", None, "publish", "admin/reboot")
    assert a.authorize("cam-1", None, "subscribe", "cam/+/frames")
    assert not a.authorize("cam-2", None, "subscribe", "cam/+/frames")


def test_substitution():
    a = make(
        acl=[
            AclRule(topic="devices/%c/#"),
            AclRule(action="subscribe", topic="users/%u/inbox"),
            AclRule(action="publish", topic="dev-%c/%u/up"),
        ],
        acl_default="deny",
    )
    assert a.authorize("d1", "bob", "publish", "devices/d1/temp")
    assert a.authorize("d1", "bob", "subscribe", "devices/d1/#")
    assert not a.authorize("d1", "bob", "publish", "devices/d2/temp")
    assert a.authorize("d1", "bob", "subscribe", "users/bob/inbox")
    assert not a.authorize("d1", "bob", "subscribe", "users/eve/inbox")
    assert not a.authorize("d1", None, "subscribe", "users/+/inbox")
    assert a.authorize("d1", "bob", "publish", "dev-d1/bob/up")
    assert not a.authorize("d1", "eve", "publish", "dev-d1/bob/up")


@pytest.mark.parametrize("client_id", ["+", "#", "a/b", "$SYS", ""])
def test_unsafe_substitution_never_widens_an_allow(client_id):
    a = make(acl=[AclRule(topic="devices/%c/#")], acl_default="deny")
    assert not a.authorize(client_id, None, "subscribe", "devices/#")
    assert not a.authorize(client_id, None, "subscribe", "devices/+/#")
    assert not a.authorize(client_id, None, "publish", "devices/x/y")
    assert not a.authorize(client_id, None, "publish", "devices/a/b/c")


def test_unsafe_substitution_never_narrows_a_deny():
    a = make(acl=[AclRule(topic="home/%u/private", permission="deny")], acl_default="allow")
    assert not a.authorize("c", "bob", "publish", "home/bob/private")
    assert a.authorize("c", "bob", "publish", "home/eve/private")
    # an anonymous client or an odd username is denied the whole pattern
    assert not a.authorize("c", None, "publish", "home/eve/private")
    assert not a.authorize("c", "a/b", "publish", "home/eve/private")


@pytest.mark.parametrize(
    "sub,allowed",
    [
        ("sensors/#", True),
        ("sensors/+/temp", True),
        ("sensors", True),  # 'sensors/#' also matches the parent
        ("sensors/a/b/c", True),
        ("#", True),  # reads sensors/...; other topics are withheld at delivery
        ("+/temp", True),  # sensors/temp
        ("$share/g/sensors/+", True),
        ("$share/g/#", True),
        ("other/#", False),  # nothing under it may be read
        ("+/+/+/x/#", True),  # sensors/a/b/x
        ("$SYS/#", False),
    ],
)
def test_subscription_granted_when_something_is_readable(sub, allowed):
    a = make(acl=[AclRule(action="subscribe", topic="sensors/#")], acl_default="deny")
    assert a.authorize("c", None, "subscribe", sub) is allowed
    assert a.may_read("c", None, "sensors/x/temp")
    assert not a.may_read("c", None, "other/temp")


def test_deny_rule_grants_wildcards_and_withholds_the_denied_topics():
    a = make(acl=[AclRule(action="subscribe", topic="secret/#", permission="deny"), AclRule(topic="#")])
    assert a.authorize("c", None, "subscribe", "#")
    assert a.authorize("c", None, "subscribe", "+/x")
    assert a.authorize("c", None, "subscribe", "public/#")
    # filters that can read nothing are still refused
    assert not a.authorize("c", None, "subscribe", "secret")
    assert not a.authorize("c", None, "subscribe", "secret/#")
    assert not a.authorize("c", None, "subscribe", "secret/+/x")
    assert not a.authorize("c", None, "subscribe", "$share/g/secret/#")
    # the delivery check
    assert not a.may_read("c", None, "secret")
    assert not a.may_read("c", None, "secret/x")
    assert a.may_read("c", None, "public/x")
    assert a.read_restricted
    assert "at delivery" in a.explain("c", None, "subscribe", "#")
    assert "auth.acl[0]" in a.explain("c", None, "subscribe", "secret/x")


def test_several_deny_rules_together_can_leave_nothing_readable():
    a = make(acl=[AclRule(topic="a/+", permission="deny"), AclRule(topic="a/+/#", permission="deny")])
    assert a.authorize("c", None, "subscribe", "a/#")  # the topic 'a'
    assert not a.authorize("c", None, "subscribe", "a/+/#")
    b = make(acl=[AclRule(topic="x/+/+", permission="deny"), AclRule(topic="x/+", permission="deny"),
                  AclRule(topic="x/+/+/#", permission="deny")])
    assert not b.authorize("c", None, "subscribe", "x/+/#")
    assert b.authorize("c", None, "subscribe", "x/#")  # 'x'


def test_read_open_when_nothing_can_deny_a_read():
    assert not make().read_restricted
    assert not make(acl=[AclRule(action="publish", topic="#", permission="deny")]).read_restricted
    assert make(acl_default="deny").read_restricted
    hooks = HookRegistry()
    a = make(hooks=hooks)
    assert not a.read_restricted
    hooks.register("on_authorize", lambda e: None)
    assert a.read_restricted


def test_dollar_topics_not_covered_by_leading_wildcards():
    a = make(acl=[AclRule(topic="#")], acl_default="deny")
    assert a.authorize("c", None, "subscribe", "a/#")
    assert not a.authorize("c", None, "subscribe", "$SYS/#")
    assert not a.authorize("c", None, "publish", "$SYS/x")
    b = make(acl=[AclRule(topic="#", permission="deny")], acl_default="allow")
    assert b.authorize("c", None, "subscribe", "$SYS/broker/#")


def test_cache_follows_username_and_forget():
    a = make(acl=[AclRule(topic="u/%u/#")], acl_default="deny")
    assert a.authorize("c", "bob", "publish", "u/bob/x")
    # same client id, new connection as another user: no stale decision
    assert not a.authorize("c", "eve", "publish", "u/bob/x")
    assert a.authorize("c", "eve", "publish", "u/eve/x")
    a.forget("c")
    assert "c" not in a._acl_cache


def _reference_first(rules, default, client_id, username, action, topic):
    """The rules read top to bottom for a publish or a read of the topic name ``topic``."""
    from kefu.broker.topics import filter_matches

    want = "publish" if action == "publish" else "subscribe"
    for r in rules:
        if r.action not in ("all", want):
            continue
        if (r.username and r.username != username) or (r.clientid and r.clientid != client_id):
            continue
        if filter_matches(r.topic, topic):
            return r.permission == "allow"
    return default == "allow"


# Every topic up to 5 levels (one past the deepest generated filter) over the rules'
# alphabet plus "c", which no rule names.
_ALL_TOPICS = [
    "/".join(t)
    for n in range(1, 6)
    for t in __import__("itertools").product(["a", "b", "c", "$s"], repeat=n)
]


def _reference_decision(rules, default, client_id, username, action, topic):
    """Brute force: a subscription is granted when some topic it matches may be read."""
    from kefu.broker.topics import filter_matches, parse_shared

    if action != "subscribe":
        return _reference_first(rules, default, client_id, username, action, topic)
    topic = parse_shared(topic)[1]
    return any(filter_matches(topic, t) and _reference_first(rules, default, client_id, username, "read", t)
               for t in _ALL_TOPICS)


@st.composite
def _filter(draw):
    levels = draw(st.lists(st.sampled_from(["a", "b", "$s", "+"]), min_size=1, max_size=3))
    if draw(st.booleans()):
        levels.append("#")
    return "/".join(levels)


_topic = st.lists(st.sampled_from(["a", "b", "c", "$s"]), min_size=1, max_size=4).map("/".join)
_rule = st.builds(
    AclRule,
    action=st.sampled_from(["publish", "subscribe", "all"]),
    topic=_filter(),
    permission=st.sampled_from(["allow", "deny"]),
    username=st.sampled_from(["", "u1"]),
    clientid=st.sampled_from(["", "c1"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_rule, max_size=6),
    st.sampled_from(["allow", "deny"]),
    st.lists(
        st.tuples(st.sampled_from(["c1", "c2"]), st.sampled_from([None, "u1"]),
                  st.one_of(st.tuples(st.just("publish"), _topic), st.tuples(st.just("subscribe"), _filter()),
                            st.tuples(st.just("read"), _topic))),
        min_size=1, max_size=10,
    ),
)
def test_acl_equals_reference(rules, default, queries):
    """The compiled, cached ACL decides exactly like the rules read top to bottom
    (publish, read) and like a search over every topic (subscribe)."""
    a = make(acl=rules, acl_default=default)
    for client_id, username, (action, topic) in queries:
        want = _reference_decision(rules, default, client_id, username, action, topic)
        ask = a.may_read if action == "read" else (lambda c, u, t, act=action: a.authorize(c, u, act, t))
        assert ask(client_id, username, topic) is want, (client_id, username, action, topic)
        assert ask(client_id, username, topic) is want  # cached answer too


# ----------------------------------------------------------------- hooks


def test_registry_rejects_unknown_names_and_wrong_payloads():
    r = HookRegistry()
    with pytest.raises(HookError, match="unknown broker hook 'on_conect'"):
        r.register("on_conect", lambda e: None)
    with pytest.raises(HookError, match="not callable"):
        r.register("on_connected", 42)
    r.register("on_authorize", lambda e: None)
    with pytest.raises(HookError, match="AuthorizeEvent"):
        r.decide("on_authorize", AuthenticateEvent("c", None, None))
    with pytest.raises(HookError, match="decide"):
        r.notify("on_authorize", AuthorizeEvent("c", None, "publish", "t"))


def test_hook_can_deny_and_allow_conversation_topics():
    members = {("cust-1", "conv/42")}
    seen = []

    def conversations(e: AuthorizeEvent):
        seen.append(e)
        if not e.topic.startswith("conv/"):
            return None
        conv = "/".join(e.topic.split("/")[:2])
        return ALLOW if (e.client_id, conv) in members else DENY

    hooks = HookRegistry()
    hooks.register("on_authorize", conversations)
    a = make(acl=[AclRule(topic="conv/#", permission="deny")], acl_default="allow", hooks=hooks)
    assert a.authorize("cust-1", None, "publish", "conv/42/msg")  # hook allows over the ACL
    assert not a.authorize("cust-2", None, "publish", "conv/42/msg")
    assert a.authorize("cust-2", None, "publish", "other")  # hook abstains, ACL default
    assert a.authorize("cust-1", None, "subscribe", "$share/g/conv/42/#")
    assert seen[-1].share_group == "g" and seen[-1].topic == "conv/42/#"
    # decisions change as membership changes: hooks are never cached
    members.clear()
    assert not a.authorize("cust-1", None, "publish", "conv/42/msg")


def test_deny_overrides_and_failing_hook_denies():
    hooks = HookRegistry()
    hooks.register("on_authorize", lambda e: ALLOW)
    hooks.register("on_authorize", lambda e: DENY if e.topic == "x" else None)
    a = make(hooks=hooks, acl_default="deny")
    assert not a.authorize("c", None, "publish", "x")
    assert a.authorize("c", None, "publish", "y")

    def broken(e):
        raise RuntimeError("db down")

    hooks.register("on_authorize", broken)
    assert not a.authorize("c", None, "publish", "y")
    hooks.unregister("on_authorize", broken)
    hooks.register("on_authorize", lambda e: "yes")  # not a Decision: fail closed
    assert not a.authorize("c", None, "publish", "y")


def test_authenticate_hook():
    hooks = HookRegistry()
    hooks.register(
        "on_authenticate",
        lambda e: Decision(False, 0x8A) if e.client_id == "banned" else (ALLOW if e.password == b"token" else None),
    )
    a = make(allow_anonymous=False, hooks=hooks)
    assert a.authenticate("banned", None, None) == 0x8A
    assert a.authenticate("dev", "device-7", b"token") == 0
    assert a.authenticate("dev", "device-7", b"other") == 0x86  # abstained: config decides
    assert a.authenticate("dev", None, None) == 0x87


def test_notification_errors_are_contained(caplog):
    hooks = HookRegistry()
    got = []
    hooks.register("on_connected", lambda e: 1 / 0)
    hooks.register("on_connected", got.append)
    ev = ConnectedEvent("c", None, 5, True, False, 60)
    hooks.notify("on_connected", ev)
    assert got == [ev]
    assert "on_connected" in caplog.text
    assert hooks.active("on_connected") and not hooks.active("on_subscribed")


def _install_plugin(tmp_path, monkeypatch, body: str, module: str):
    """A real installed distribution (dist-info with entry_points.txt) on sys.path."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[kefu.broker_hooks]\nconv = {module}:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_plugin_discovered_through_entry_point(tmp_path, monkeypatch):
    _install_plugin(
        tmp_path,
        monkeypatch,
        """
        from kefu.broker.hooks import DENY
        def register(hooks):
            hooks.register("on_authorize", lambda e: DENY if e.topic.startswith("vip/") else None)
        """,
        "kefu_test_plugin_ok",
    )
    hooks = HookRegistry()
    assert load_plugins(hooks) == ["conv"]
    a = make(hooks=hooks)
    assert not a.authorize("c", None, "publish", "vip/x")
    assert a.authorize("c", None, "publish", "x")


def test_broken_plugin_is_an_error_naming_it(tmp_path, monkeypatch):
    _install_plugin(
        tmp_path,
        monkeypatch,
        """
        def register(hooks):
            hooks.register("on_publish", print)
        """,
        "kefu_test_plugin_broken",
    )
    with pytest.raises(HookError, match=r"plugin 'conv'.*unknown broker hook 'on_publish'"):
        load_plugins(HookRegistry())


# ----------------------------------------------------------------- hooks on the live broker


async def _read_packet(stream, buf: bytearray) -> bytes:
    while True:
        if len(buf) >= 2:
            n, mult, i = 0, 1, 1
            while i < len(buf) and i <= 4:
                n += (buf[i] & 0x7F) * mult
                mult *= 128
                if not buf[i] & 0x80:
                    end = i + 1 + n
                    if len(buf) >= end:
                        pkt = bytes(buf[:end])
                        del buf[:end]
                        return pkt
                    break
                i += 1
        data = await stream.receive_some(65536)
        assert data, "broker closed the connection"
        buf += data


async def test_hooks_decide_on_the_live_broker():
    """A registered on_authorize hook denies over the wire (SUBACK/PUBACK 0x87) and
    notification hooks see the connection and the accepted message."""
    import trio

    from kefu.broker.hooks import MessagePublishedEvent
    from kefu.broker.server import Broker
    from kefu.config.load import from_dict

    seen = []
    hooks = HookRegistry()
    hooks.register(
        "on_authorize",
        lambda e: (DENY if e.topic.startswith("conv/") and e.client_id != "agent" else None),
    )
    hooks.register("on_connected", seen.append)
    hooks.register("on_message_published", seen.append)
    cfg = from_dict({"listeners": {"mqtt": {"host": "127.0.0.1", "port": 0},
                                   "ws": {"enabled": False}, "http": {"enabled": False}}})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(Broker(cfg, hooks).serve)
            stream = await trio.open_tcp_stream("127.0.0.1", addrs[0].port)
            buf = bytearray()
            await stream.send_all(bytes.fromhex("10 11 0004 4d515454 05 02 003c 00 0004 63757374"))  # 'cust'
            connack = await _read_packet(stream, buf)
            assert connack[0] == 0x20 and connack[3] == 0x00
            # SUBSCRIBE pid 1: 'conv/1/#' and 'news', QoS 1 each
            await stream.send_all(bytes.fromhex("82 15 0001 00 0008") + b"conv/1/#" + b"\x01\x00\x04news\x01")
            assert await _read_packet(stream, buf) == bytes.fromhex("90 05 0001 00 87 01")
            # PUBLISH QoS 1 to conv/1/msg: refused; to news: accepted (no subscriber but itself)
            await stream.send_all(bytes.fromhex("32 10 000a") + b"conv/1/msg" + bytes.fromhex("0002 00") + b"x")
            ack = await _read_packet(stream, buf)
            assert ack[:2] == b"\x40\x03" or ack[:2] == b"\x40\x04"
            assert ack[2:5] == bytes.fromhex("0002 87")
            await stream.send_all(bytes.fromhex("32 0a 0004") + b"news" + bytes.fromhex("0003 00") + b"y")
            got = {(await _read_packet(stream, buf))[0] for _ in range(2)}  # PUBACK and our own PUBLISH
            assert got == {0x40, 0x32}
            nursery.cancel_scope.cancel()
    kinds = [type(e).__name__ for e in seen]
    assert kinds[0] == "ConnectedEvent" and seen[0].client_id == "cust"
    published = [e for e in seen if isinstance(e, MessagePublishedEvent)]
    assert [(e.topic, e.payload) for e in published] == [("news", b"y")]
