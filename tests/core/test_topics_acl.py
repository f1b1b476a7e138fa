"""The conversation ACL against an attacker who tries every neighbouring topic and wildcard.

A universe of concrete topics is built from the scheme (every template with own and
other ids) plus each topic's neighbours (any one level replaced). The attacker's
filters are those topics with one or two levels turned into '+', cut off with '#', or
wrapped as shared subscriptions. The reference says what each principal may read and
write on concrete topics; the broker's own matcher says which concrete topics a filter
reaches. As in Mosquitto, a filter is granted when it can read something and each
message is checked at delivery: the delivery check must equal the reference on every
topic (so no granted filter delivers an unreadable topic), a refused filter must reach
nothing readable, every publish verdict must equal the reference, and the legitimate
filters must all be allowed.
"""

from __future__ import annotations

import itertools

import pytest

from kefu.broker.topics import TopicTrie
from kefu.topics import Acl, Principal, Topics, Verdict, identify, valid_id

T = Topics("kefu")
ASSIGNED = {"cv-1": "a1", "cv-2": "a2"}
ACL = Acl(T, ASSIGNED.get)

CUSTOMERS = ("c1", "c2")
AGENTS = {"a1": frozenset({"general"}), "a2": frozenset({"vip"})}
PRINCIPALS = [Principal("customer", c) for c in CUSTOMERS] + [
    Principal("agent", a, teams) for a, teams in AGENTS.items()
]
IDS = ("c1", "c2", "a1", "a2", "main", "general", "vip", "cv-1", "cv-2", "zz")
LEAVES = ("in", "out", "events", "inbox", "ctl", "queue", "alarm", "conv", "zz")


def _base_topics() -> set[str]:
    out = {"kefu", "kefu/desk/events", "kefu/c", "kefu/agent", "kefu/team", "$SYS/broker/load", "other/topic"}
    for a, b in itertools.product(IDS, IDS):
        for leaf in LEAVES:
            out.add(f"kefu/c/{a}/{b}/{leaf}")
        out.add(f"kefu/agent/{a}/conv/{b}")
        out.add(f"kefu/c/{a}/{b}")
    for a in IDS:
        for leaf in LEAVES:
            out.add(f"kefu/agent/{a}/{leaf}")
            out.add(f"kefu/team/{a}/{leaf}")
            out.add(f"kefu/d/{a}/{leaf}")
        out.add(f"kefu/c/{a}")
    return out


def _universe() -> set[str]:
    base = _base_topics()
    out = set(base)
    for t in base:
        lv = t.split("/")
        for i in range(len(lv)):
            out.add("/".join(lv[:i] + ["zz"] + lv[i + 1:]))
        out.add(t + "/zz")
    return out


UNIVERSE = sorted(_universe())


def _attacker_filters() -> set[str]:
    out = {"#", "+", "+/#", "kefu/#", "kefu/+", "kefu/+/#", "$share/g/#", "$share/g/kefu/#", "$SYS/#"}
    for t in _base_topics():
        lv = t.split("/")
        n = len(lv)
        for i in range(n):
            out.add("/".join(lv[:i] + ["+"] + lv[i + 1:]))
            out.add("/".join(lv[:i] + ["#"]))
            for j in range(i + 1, n):
                two = list(lv)
                two[i] = two[j] = "+"
                out.add("/".join(two))
        out.add(t)
        out.add(t + "/#")
        out.add("$share/g/" + t)
    return out


FILTERS = sorted(_attacker_filters())


def _reach() -> dict[str, list[str]]:
    """filter -> the universe topics it matches, by the broker's subscription trie."""
    trie = TopicTrie(cache_size=0)
    by_core: dict[str, list[str]] = {}
    for f in FILTERS:
        core = f.split("/", 2)[2] if f.startswith("$share/") else f
        if core not in by_core:
            trie.add(core, core)
        by_core.setdefault(core, []).append(f)
    reach: dict[str, list[str]] = {f: [] for f in FILTERS}
    for t in UNIVERSE:
        for core in {m[2] for m in trie.match(t)}:
            for f in by_core[core]:
                reach[f].append(t)
    return reach


@pytest.fixture(scope="module")
def reach() -> dict[str, list[str]]:
    return _reach()


def in_namespace(t: str) -> bool:
    return t == "kefu" or t.startswith("kefu/")


def may_read(p: Principal, t: str) -> bool:
    lv = t.split("/")
    if p.kind == "customer":
        return lv[:3] == ["kefu", "c", p.id]
    if lv[:3] == ["kefu", "agent", p.id]:
        return True
    return len(lv) == 4 and lv[:2] == ["kefu", "team"] and lv[2] in p.teams and lv[3] == "queue"


def may_write(p: Principal, t: str) -> bool:
    lv = t.split("/")
    if p.kind == "customer":
        own_in = len(lv) == 5 and lv[:3] == ["kefu", "c", p.id] and valid_id(lv[3]) and lv[4] == "in"
        alarm = lv == ["kefu", "d", p.id, "alarm"]
        return own_in or alarm
    if lv == ["kefu", "agent", p.id, "ctl"]:
        return True
    return len(lv) == 5 and lv[:4] == ["kefu", "agent", p.id, "conv"] and ASSIGNED.get(lv[4]) == p.id


@pytest.mark.parametrize("who", PRINCIPALS, ids=lambda p: f"{p.kind}-{p.id}")
def test_delivery_check_equals_reference_on_every_topic(who):
    """What the broker asks at delivery (``subscribe`` with the topic name) is the reference."""
    for t in UNIVERSE:
        v = ACL.subscribe(who, t)
        if not in_namespace(t):
            assert v == Verdict.ABSTAIN, t
        else:
            assert (v == Verdict.ALLOW) == may_read(who, t), f"{who.id} read {t!r}: {v}"


@pytest.mark.parametrize("who", PRINCIPALS, ids=lambda p: f"{p.kind}-{p.id}")
def test_no_filter_delivers_what_the_principal_may_not_read(who, reach):
    """Granted filters deliver only readable kefu topics; refused ones could read none."""
    allowed = 0
    for f in FILTERS:
        v = ACL.subscribe(who, f)
        hits = [t for t in reach[f] if in_namespace(t)]
        delivered = [t for t in hits if ACL.subscribe(who, t) == Verdict.ALLOW]
        leaks = [t for t in delivered if not may_read(who, t)]
        assert not leaks, f"{who.id} subscribed {f!r} and would receive {leaks[:3]}"
        readable = [t for t in hits if may_read(who, t)]
        if v == Verdict.ALLOW:
            allowed += 1
        else:
            # a refused (or not kefu's) filter: nothing it reaches in kefu's namespace was readable
            assert not readable, f"{who.id} refused {f!r} which reaches readable {readable[:3]}"
            if v == Verdict.ABSTAIN:
                assert not f.removeprefix("$share/g/").startswith("kefu/"), f
    assert allowed > 50  # the attacker set includes plenty of legitimate filters
    own = "+/c/+/+/out" if who.kind == "customer" else "+/agent/+/inbox"
    for f in ("#", "+/#", "kefu/#", "$share/g/#", own):
        assert ACL.subscribe(who, f) == Verdict.ALLOW, f  # wildcards reaching its own topics


@pytest.mark.parametrize("who", PRINCIPALS, ids=lambda p: f"{p.kind}-{p.id}")
def test_publish_verdict_equals_reference_on_every_topic(who):
    for t in UNIVERSE + [f for f in FILTERS if "+" in f or "#" in f][:500]:
        v = ACL.publish(who, t)
        if "+" in t or "#" in t:
            assert v == Verdict.DENY, t
        elif not in_namespace(t):
            assert v == Verdict.ABSTAIN, t
        else:
            assert (v == Verdict.ALLOW) == may_write(who, t), f"{who.id} publish {t!r}: {v}"


LEGIT = {
    "c1": ["kefu/c/c1/main/out", "kefu/c/c1/main/events", "kefu/c/c1/+/out", "kefu/c/c1/#", "kefu/c/c1/main/#",
           "$share/g/kefu/c/c1/main/out"],
    "a1": ["kefu/agent/a1/inbox", "kefu/agent/a1/#", "kefu/team/general/queue"],
}


def test_legitimate_subscriptions_are_allowed():
    c1 = Principal("customer", "c1")
    a1 = Principal("agent", "a1", frozenset({"general"}))
    for f in LEGIT["c1"]:
        assert ACL.subscribe(c1, f) == Verdict.ALLOW, f
    for f in LEGIT["a1"]:
        assert ACL.subscribe(a1, f) == Verdict.ALLOW, f
    assert ACL.subscribe(a1, "kefu/team/vip/queue") == Verdict.DENY
    assert ACL.subscribe(a1, "kefu/c/+/+/out") == Verdict.DENY  # agents read conversations via the inbox
    assert ACL.subscribe(a1, "kefu/team/+/queue") == Verdict.ALLOW  # delivers its own team's only
    assert ACL.subscribe(a1, "kefu/team/vip/queue") == Verdict.DENY


def test_assignment_is_live():
    assigned = {"cv-9": "a1"}
    acl = Acl(T, assigned.get)
    a1 = Principal("agent", "a1", frozenset({"general"}))
    assert acl.publish(a1, "kefu/agent/a1/conv/cv-9") == Verdict.ALLOW
    assigned["cv-9"] = "a2"  # transferred away: write access ends at once
    assert acl.publish(a1, "kefu/agent/a1/conv/cv-9") == Verdict.DENY


def test_nobody_and_services():
    svc = Principal("service", "bridge")
    assert ACL.subscribe(svc, "#") == Verdict.ALLOW
    assert ACL.publish(svc, "kefu/c/c1/main/out") == Verdict.ALLOW
    assert ACL.subscribe(None, "kefu/c/c1/#") == Verdict.DENY
    assert ACL.subscribe(None, "other/#") == Verdict.ABSTAIN
    assert ACL.publish(None, "kefu/c/c1/main/in") == Verdict.DENY


def test_custom_prefix_and_alarm_topic_outside_it():
    t = Topics("acme/help", alarm_topic="devices/{device}/alarm")
    acl = Acl(t, {}.get)
    d7 = Principal("customer", "d7")
    assert acl.publish(d7, "acme/help/c/d7/main/in") == Verdict.ALLOW
    assert acl.publish(d7, "acme/help/c/d8/main/in") == Verdict.DENY
    assert acl.publish(d7, "devices/d7/alarm") == Verdict.ALLOW
    assert acl.publish(d7, "devices/d8/alarm") == Verdict.DENY
    # wildcards reaching its own threads are granted; each message is checked at delivery
    assert acl.subscribe(d7, "acme/+/c/d7/#") == Verdict.ALLOW
    assert acl.subscribe(d7, "acme/#") == Verdict.ALLOW
    assert acl.subscribe(d7, "acme/help/c/d8/main/out") == Verdict.DENY
    assert acl.subscribe(d7, "acme/help/c/d7/main/out") == Verdict.ALLOW
    assert acl.subscribe(d7, "acme/help/agent/#") == Verdict.DENY
    assert acl.subscribe(d7, "acme/other/c/d7/x") == Verdict.ABSTAIN
    assert acl.subscribe(d7, "acme/help/c/d7/#") == Verdict.ALLOW
    assert t.parse("devices/d7/alarm").device == "d7"
    assert t.parse("acme/help/c/d7/main/in").customer == "d7"
    assert t.parse("acme/help/c/d7/main/out") is None


def test_identify():
    agents = {"a1": frozenset({"general"})}
    assert identify("agent:a1", "x", agents=agents) == Principal("agent", "a1", frozenset({"general"}))
    assert identify("agent:nobody", "x", agents=agents) is None  # unknown agents get nothing
    assert identify("bridge", "x", agents=agents, service_users=frozenset({"bridge"})).kind == "service"
    # Nobody vouched for these: anonymous customers, namespaced by client id (issue 12)
    assert identify(None, "dev-42", agents=agents) == Principal("customer", "anon:dev-42")
    assert identify("alice@example.com", "x", agents=agents) == Principal("customer", "anon:x")
    # A configured (password-checked) user is that customer
    verified = frozenset({"alice@example.com", "anon:bob"})
    assert identify("alice@example.com", "x", agents=agents, verified_users=verified).id == "alice@example.com"
    assert identify("anon:bob", "x", agents=agents, verified_users=verified) is None  # reserved prefix
    assert identify(None, "user-2001", agents=agents, verified_users=frozenset({"user-2001"})).id == "anon:user-2001"
    assert identify(None, "bad/id", agents=agents) is None
    assert identify(None, "+", agents=agents) is None
    assert identify(None, "x" * 60, agents=agents) is None  # anon: + 60 is over 64 characters
