"""Topic validation, filter algebra and the subscription trie.

The table tests use the examples of MQTT 5.0 section 4.7 (identical in 3.1.1); the
property tests compare the trie with the one-line reference matcher over random
filters, topics and add/remove/match sequences, so the match cache is exercised
between updates.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kefu.broker.topics import (
    TopicTrie,
    filter_covers,
    filter_matches,
    filters_overlap,
    parse_shared,
    validate_topic_filter,
    validate_topic_name,
)

# ----------------------------------------------------------------- spec examples

# (filter, topic, matches) from spec 4.7.1.2, 4.7.1.3 and 4.7.2.
SPEC_MATCHES = [
    # 4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    # 4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+", "sport", True),
    ("+/tennis/#", "sport/tennis", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    # 4.7.2 topics beginning with $ [MQTT-4.7.2-1]
    ("#", "$SYS/broker/clients", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("+", "$SYS", False),
    # levels are case sensitive and may be empty
    ("ACCOUNTS", "Accounts", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("/", "/", True),
]


@pytest.mark.parametrize("filt,topic,expected", SPEC_MATCHES)
def test_spec_examples_reference(filt, topic, expected):
    assert filter_matches(filt, topic) is expected


@pytest.mark.parametrize("filt,topic,expected", SPEC_MATCHES)
def test_spec_examples_trie(filt, topic, expected):
    trie = TopicTrie()
    trie.add(filt, "c", 1)
    assert bool(trie.match(topic)) is expected
    # the same through the shared path
    trie.add(f"$share/g/{filt}", "s", 2)
    assert bool(trie.match_shared(topic)) is expected


VALID_FILTERS = ["#", "+", "a/#", "a/+/b", "+/+", "/", "a//b", "$SYS/#", "sport/tennis/#", "€/+/ü", "$share"]
INVALID_FILTERS = [
    ("", "empty"),
    ("a/#/b", "last"),
    ("a#", "whole level"),
    ("a/b#", "whole level"),
    ("a+/b", "whole level"),
    ("a/+b", "whole level"),
    ("##", "whole level"),
    ("a\x00b", "U+0000"),
    ("$share/g", "topic filter must follow"),
    ("$share/g/", "topic filter must follow"),
    ("$share//a", "must not be empty"),
    ("$share/g+/a", "must not contain"),
    ("$share/#/a", "must not contain"),
    ("$share/g/a/#/b", "last"),
    ("x" * 65536, "65535"),
    ("\ud800", "UTF-8"),
]


@pytest.mark.parametrize("filt", VALID_FILTERS)
def test_valid_filters(filt):
    validate_topic_filter(filt)


@pytest.mark.parametrize("filt,why", INVALID_FILTERS)
def test_invalid_filters(filt, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        validate_topic_filter(filt)


@pytest.mark.parametrize("name", ["a", "/", "a/b/c", "$SYS/x", " ", "€uro", "x" * 65535])
def test_valid_names(name):
    validate_topic_name(name)


@pytest.mark.parametrize(
    "name,why",
    [("", "empty"), ("a/+", "wildcards"), ("#", "wildcards"), ("a+b", "wildcards"), ("a\x00", "U+0000"),
     ("€" * 21846, "65535")],
)
def test_invalid_names(name, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        validate_topic_name(name)


def test_level_limit():
    validate_topic_name("a/b/c", max_levels=3)
    with pytest.raises(ValueError, match="4 levels"):
        validate_topic_name("a/b/c/d", max_levels=3)
    # the share prefix does not count
    validate_topic_filter("$share/g/a/b/#", max_levels=3)
    with pytest.raises(ValueError, match="max_topic_levels"):
        validate_topic_filter("a/b/c/#", max_levels=3)


def test_parse_shared():
    assert parse_shared("$share/grp/a/+/#") == ("grp", "a/+/#")
    assert parse_shared("a/b") == (None, "a/b")
    assert parse_shared("$share") == (None, "$share")
    assert parse_shared("$sharex/g/a") == (None, "$sharex/g/a")
    assert validate_topic_filter("$share/g/#") == ("g", "#")


# ----------------------------------------------------------------- trie behaviour


def test_add_replace_remove_len():
    t = TopicTrie()
    assert t.add("a/+", "c1", {"qos": 0}) is True
    assert t.add("a/+", "c1", {"qos": 1}) is False  # replaced
    assert t.match("a/b") == (("c1", {"qos": 1}, "a/+"),)
    assert t.add("a/+", "c2", 2) and t.add("$share/g/a/+", "c1", 3)
    assert len(t) == 3
    assert t.get("a/+", "c2") == 2 and t.get("$share/g/a/+", "c1") == 3 and t.get("a/#", "c1") is None
    assert ("a/+", "c1") in t and ("a/+", "zz") not in t
    assert t.remove("a/+", "c1") is True
    assert t.remove("a/+", "c1") is False
    assert t.remove("nope/x", "c1") is False
    assert t.remove("$share/other/a/+", "c1") is False
    assert len(t) == 2
    assert sorted(t.entries()) == [("$share/g/a/+", "c1", 3), ("a/+", "c2", 2)]


def test_overlapping_filters_each_reported():
    t = TopicTrie()
    for f in ["a/b", "a/+", "a/#", "#", "+/b"]:
        t.add(f, "c", f)
    assert sorted(f for _, _, f in t.match("a/b")) == sorted(["#", "a/#", "a/+", "a/b", "+/b"])


def test_remove_prunes_every_node():
    t = TopicTrie()
    filters = ["a/b/c/d", "a/b/#", "a/+/c", "$share/g/a/b/c/d", "x", "#", "+/+/+/+/+"]
    for i, f in enumerate(filters):
        t.add(f, i, None)
        t.add(f, "other", None)
    assert t.node_count() > 0
    for i, f in enumerate(filters):
        t.remove(f, i)
        t.remove(f, "other")
    assert len(t) == 0
    assert t.node_count() == 0


def test_cache_invalidated_on_exact_and_wildcard_changes():
    t = TopicTrie()
    assert t.match("a/b") == ()
    t.add("a/b", 1)
    assert [k for k, _, _ in t.match("a/b")] == [1]
    t.add("a/#", 2)
    assert sorted(k for k, _, _ in t.match("a/b")) == [1, 2]
    t.add("a/#", 2, "new value")
    assert "new value" in [v for _, v, _ in t.match("a/b")]
    t.remove("a/b", 1)
    assert [k for k, _, _ in t.match("a/b")] == [2]
    t.add("$share/g/a/b", 3)
    assert [g.name for g in t.match_shared("a/b")] == ["g"]
    t.remove("$share/g/a/b", 3)
    assert t.match_shared("a/b") == ()


def test_cache_is_bounded():
    t = TopicTrie(cache_size=8)
    t.add("#", "c")
    for i in range(100):
        assert t.match(f"t/{i}")
    assert len(t._cache) <= 8
    t2 = TopicTrie(cache_size=0)
    t2.add("a", 1)
    assert t2.match("a") and not t2._cache


def test_shared_groups_round_robin():
    t = TopicTrie()
    t.add("$share/g/s/+", "a", 0)
    t.add("$share/g/s/+", "b", 1)
    t.add("$share/g/s/+", "c", 2)
    t.add("$share/h/s/+", "a", 0)  # another group, same filter
    t.add("$share/g/s/#", "z", 0)  # same group name, another filter: another group
    t.add("s/+", "plain", 9)
    plain, groups = t.match_all("s/1")
    assert plain == (("plain", 9, "s/+"),)
    assert sorted(g.filter for g in groups) == ["$share/g/s/#", "$share/g/s/+", "$share/h/s/+"]
    g = next(g for g in groups if g.filter == "$share/g/s/+")
    assert [g.pick()[0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    # skipping members that cannot take a message now
    assert g.pick(lambda k: k != "a") == ("b", 1)
    assert g.pick(lambda k: False) is None
    # removing the member that was next keeps the rotation fair
    g2 = TopicTrie()
    for k in "abc":
        g2.add("$share/q/t", k)
    grp = g2.match_shared("t")[0]
    assert grp.pick()[0] == "a"
    g2.remove("$share/q/t", "a")
    assert [grp.pick()[0] for _ in range(4)] == ["b", "c", "b", "c"]


def test_dollar_rule_for_shared():
    t = TopicTrie()
    t.add("$share/g/#", 1)
    t.add("$share/g/$SYS/#", 2)
    assert [g.filter for g in t.match_shared("$SYS/x")] == ["$share/g/$SYS/#"]


# ----------------------------------------------------------------- filter algebra

ALPHA_F = ["a", "b", "$x", "+", "#"]
ALPHA_T = ["a", "b", "c", "$x"]


def _all_filters(max_levels=3):
    out = []
    for n in range(1, max_levels + 1):
        for levels in itertools.product(ALPHA_F, repeat=n):
            if "#" in levels[:-1]:
                continue
            if any(lv.startswith("$") for lv in levels[1:]):
                continue  # '$' only matters as the first level; keeps the space small
            out.append("/".join(levels))
    return out


def _all_topics(max_levels=4):
    return ["/".join(p) for n in range(1, max_levels + 1) for p in itertools.product(ALPHA_T, repeat=n)]


FILTERS = _all_filters()
TOPICS = _all_topics()


def test_covers_and_overlap_exhaustive():
    """Against the definition, over every filter pair of a small alphabet.

    Topics use a letter no filter names ('c') and one level more than the
    deepest filter, so any non-covered / overlapping case has a witness here.
    """
    matched = {f: frozenset(t for t in TOPICS if filter_matches(f, t)) for f in FILTERS}
    for outer in FILTERS:
        for inner in FILTERS:
            covers = matched[inner] <= matched[outer]
            assert filter_covers(outer, inner) is covers, (outer, inner)
            overlap = bool(matched[inner] & matched[outer])
            assert filters_overlap(outer, inner) is overlap, (outer, inner)


# ----------------------------------------------------------------- property tests

level = st.sampled_from(["a", "b", "c", "", "$s", "ü"])
topic_st = st.lists(level, min_size=1, max_size=5).map(lambda levels: "/".join(levels) or "/")


@st.composite
def filter_st(draw):
    levels = draw(st.lists(st.sampled_from(["a", "b", "", "$s", "+", "ü"]), min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels) or "a"  # one empty level would be the empty filter, which is invalid
    if draw(st.integers(0, 4)) == 0:
        f = f"$share/{draw(st.sampled_from(['g', 'h']))}/{f}"
    return f


op_st = st.one_of(
    st.tuples(st.just("add"), filter_st(), st.integers(0, 3), st.integers()),
    st.tuples(st.just("remove"), filter_st(), st.integers(0, 3)),
    st.tuples(st.just("match"), topic_st),
)


def _reference(model: dict, topic: str):
    plain, groups = set(), {}
    for (filt, key), value in model.items():
        group, inner = parse_shared(filt)
        if not filter_matches(inner, topic):
            continue
        if group is None:
            plain.add((key, value, filt))
        else:
            groups.setdefault(filt, {})[key] = value
    return plain, groups


def _check(trie: TopicTrie, model: dict, topic: str) -> None:
    plain, groups = trie.match_all(topic)
    want_plain, want_groups = _reference(model, topic)
    assert len(plain) == len(set(plain)), "duplicate entries"
    assert set(plain) == want_plain
    assert len(groups) == len({g.filter for g in groups}), "a group reported twice"
    assert {g.filter: dict(g.members) for g in groups} == want_groups


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=60), st.lists(topic_st, max_size=10))
def test_trie_equals_reference(ops, probes):
    trie = TopicTrie(cache_size=16)
    model: dict = {}
    for op in ops:
        if op[0] == "add":
            _, filt, key, value = op
            validate_topic_filter(filt)
            assert trie.add(filt, key, value) is ((filt, key) not in model)
            model[(filt, key)] = value
        elif op[0] == "remove":
            _, filt, key = op
            assert trie.remove(filt, key) is ((filt, key) in model)
            model.pop((filt, key), None)
        else:
            _check(trie, model, op[1])
        assert len(trie) == len(model)
    for topic in probes:
        _check(trie, model, topic)
    for filt, key in list(model):
        trie.remove(filt, key)
    assert len(trie) == 0 and trie.node_count() == 0
