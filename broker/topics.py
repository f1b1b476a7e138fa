"""Topic names, topic filters and the subscription trie.

Pure Python, no I/O. Three parts:

* Validation (spec 4.7): ``validate_topic_name`` and ``validate_topic_filter`` raise
  ``ValueError`` with a message fit for a log line or a 5.0 reason string.
  ``parse_shared`` splits ``$share/{group}/{filter}`` (spec 4.8.2).

* Filter algebra used by the ACL: ``filter_matches`` (one filter against one topic,
  the reference semantics), ``filter_covers`` (every topic the inner filter can match
  is matched by the outer one) and ``filters_overlap`` (some topic is matched by both).

* ``TopicTrie``: the subscription store the router matches every PUBLISH against.

How the trie works
------------------
A filter is split on ``/`` into levels and stored as a path of nodes from the root,
one node per level; ``+`` and ``#`` are ordinary child names. A node holds the
subscriptions whose filter ends there (``subs``: subscriber key -> (key, value,
filter) triple, prebuilt so a match allocates nothing per subscriber) and the shared
groups whose inner filter ends there (``shared``: group name -> ``SharedGroup``).

Matching a topic walks the levels breadth first with the set of nodes still alive.
At each level a live node contributes up to three things: its ``#`` child (matches
this level and everything below, so its subscriptions are collected at once), its
``+`` child (matches this one level, stays alive) and the child named exactly like
the level (stays alive). After the last level every live node's own subscriptions
match, and so do those of its ``#`` child, because ``a/#`` also matches ``a`` (the
parent level, [MQTT-4.7.1-2]). The ``$`` rule ([MQTT-4.7.2-1]) is one test: at the
first level of a topic starting with ``$`` the root's ``+`` and ``#`` children are
skipped. A node is reached by one path only, so nothing is collected twice.

The cost of a match is proportional to the number of trie nodes the topic touches,
not to the number of subscriptions. On top of that the result for a whole topic
is cached (bounded, FIFO eviction): a PUBLISH to a topic seen before is one dict
lookup. Invalidation is exact for filters without wildcards (only that topic's
entry can change) and clears the cache for wildcard filters (any cached topic may
change); adding or removing a subscription is rare next to publishing.

Unsubscribing removes the entry and then prunes every node left without
subscriptions, shared groups or children, so the trie never keeps memory for
filters nobody holds.

Shared subscriptions
--------------------
``add("$share/g/f", key, value)`` stores ``key`` as a member of group ``g`` on
filter ``f`` (the same call and the same ``remove`` as a plain filter, so the router
does not need two code paths for SUBSCRIBE/UNSUBSCRIBE). ``match(topic)`` returns
only plain subscriptions; ``match_shared(topic)`` returns each matching group once
as a ``SharedGroup`` (``name``, ``filter`` = the full ``$share/g/f`` string,
``members``: key -> value in joining order). ``match_all(topic)`` returns both from
one walk, which is what the router's publish path should call. To deliver to a
group the router calls ``group.pick()`` (round robin over the members, optionally
skipping members it cannot deliver to right now) and sends to that one member.
Groups with the same name on different filters are different groups (spec 4.8.2).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Any

MAX_TOPIC_BYTES = 65535
SHARE_PREFIX = "$share/"

__all__ = [
    "MAX_TOPIC_BYTES",
    "SharedGroup",
    "TopicTrie",
    "filter_covers",
    "filter_intersection",
    "filter_matches",
    "filters_overlap",
    "levels_match",
    "parse_shared",
    "validate_topic_filter",
    "validate_topic_name",
]


# --------------------------------------------------------------------------- validation


def _check_string(s: str, what: str) -> None:
    if not isinstance(s, str):
        raise ValueError(f"{what} must be a string, got {type(s).__name__}")
    if not s:
        raise ValueError(f"{what} must not be empty [MQTT-4.7.3-1]")
    if "\x00" in s:
        raise ValueError(f"{what} must not contain U+0000 [MQTT-4.7.3-2]")
    try:
        n = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 (it contains a surrogate) [MQTT-1.5.4-1]") from None
    if n > MAX_TOPIC_BYTES:
        raise ValueError(f"{what} is {n} bytes of UTF-8, more than {MAX_TOPIC_BYTES} [MQTT-4.7.3-3]")


def _check_levels(levels: int, max_levels: int | None, what: str) -> None:
    if max_levels is not None and max_levels > 0 and levels > max_levels:
        raise ValueError(f"{what} has {levels} levels, more than the {max_levels} allowed (mqtt.max_topic_levels)")


def validate_topic_name(name: str, max_levels: int | None = None) -> None:
    """Raise ``ValueError`` unless ``name`` may be used in a PUBLISH.

    Non-empty, at most 65535 bytes of UTF-8, no U+0000, no ``+`` or ``#``
    ([MQTT-4.7.0-1], [MQTT-3.3.2-2]) and at most ``max_levels`` levels (``None``
    or 0: no limit).
    """
    _check_string(name, "topic name")
    if "+" in name or "#" in name:
        raise ValueError(f"topic name {name!r} must not contain the wildcards + or # [MQTT-3.3.2-2]")
    _check_levels(name.count("/") + 1, max_levels, "topic name")


def _check_filter_levels(filt: str, what: str) -> int:
    levels = filt.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                raise ValueError(f"{what} {filt!r}: '#' must occupy a whole level [MQTT-4.7.1-2]")
            if i != last:
                raise ValueError(f"{what} {filt!r}: '#' must be the last level [MQTT-4.7.1-2]")
        elif "+" in level and level != "+":
            raise ValueError(f"{what} {filt!r}: '+' must occupy a whole level [MQTT-4.7.1-3]")
    return len(levels)


def validate_topic_filter(filt: str, max_levels: int | None = None) -> tuple[str | None, str]:
    """Raise ``ValueError`` unless ``filt`` may be used in a SUBSCRIBE/UNSUBSCRIBE.

    Rules: non-empty, at most 65535 bytes of UTF-8, no U+0000; ``#`` alone in the
    last level; ``+`` alone in its level ([MQTT-4.7.1-1..3]); a ``$share/g/f``
    filter needs a non-empty group without wildcards or ``/`` and a valid,
    non-empty ``f`` ([MQTT-4.8.2-1], [MQTT-4.8.2-2]). ``max_levels`` counts the
    levels of ``f`` (``None`` or 0: no limit).

    Returns ``parse_shared(filt)``: ``(group, filter)``, group ``None`` when plain.
    """
    _check_string(filt, "topic filter")
    group, inner = parse_shared(filt)
    n = _check_filter_levels(inner, "topic filter")
    _check_levels(n, max_levels, "topic filter")
    return group, inner


def parse_shared(filt: str) -> tuple[str | None, str]:
    """``"$share/g/a/b"`` -> ``("g", "a/b")``; a plain filter -> ``(None, filt)``.

    Raises ``ValueError`` for a malformed shared filter: empty group, a group with
    ``+``/``#``, or no filter after the group ([MQTT-4.8.2-1], [MQTT-4.8.2-2]).
    Only the prefix ``$share/`` makes a filter shared; ``$share`` alone is plain.
    """
    if not filt.startswith(SHARE_PREFIX):
        return None, filt
    rest = filt[len(SHARE_PREFIX):]
    group, sep, inner = rest.partition("/")
    if not group:
        raise ValueError(f"shared subscription {filt!r}: the share name must not be empty [MQTT-4.8.2-1]")
    if "+" in group or "#" in group:
        raise ValueError(f"shared subscription {filt!r}: the share name must not contain + or # [MQTT-4.8.2-2]")
    if not sep or not inner:
        raise ValueError(f"shared subscription {filt!r}: a topic filter must follow the share name [MQTT-4.8.2-2]")
    return group, inner


# --------------------------------------------------------------------------- filter algebra


def filter_matches(filt: str, topic: str) -> bool:
    """Does the (plain, valid) filter match the (valid) topic name?

    The reference semantics the trie is tested against; fine for one-off checks,
    use ``TopicTrie`` for many filters.
    """
    return levels_match(filt.split("/"), topic.split("/"))


def levels_match(f: list[str] | tuple[str, ...], t: list[str] | tuple[str, ...]) -> bool:
    """``filter_matches`` on filter and topic already split on ``/`` (no re-splitting
    when one topic is checked against many filters, as the ACL does)."""
    if t[0][:1] == "$" and f[0] in ("+", "#"):
        return False
    n = len(t)
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= n:
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == n


def filter_covers(outer: str, inner: str) -> bool:
    """True when every topic ``inner`` can match is also matched by ``outer``.

    Both are plain, valid filters. Used by the ACL: a subscription is allowed by
    an allow rule only if the rule's filter covers it. Examples: ``a/#`` covers
    ``a``, ``a/+`` and ``a/b/#``; ``a/+`` covers ``a/b`` but not ``a/#``; ``#``
    does not cover ``$SYS/#`` (the ``$`` rule).
    """
    o = outer.split("/")
    i_ = inner.split("/")
    if o[0] in ("+", "#") and i_[0].startswith("$"):
        return False
    n_o = len(o)
    for k, s in enumerate(i_):
        if k >= n_o:
            return False  # inner is deeper than an outer without '#'
        r = o[k]
        if r == "#":
            return True
        if s == "#":
            # inner matches every suffix from here on: the empty one (the parent)
            # when k > 0, any of one level or more when k == 0 ('#' alone). Only
            # '#' matches all of those, or '+/#' in the second case.
            return k == 0 and o[k:] == ["+", "#"]
        if r == "+":
            continue
        if s != r:  # includes s == '+' against a literal
            return False
    # inner exhausted: it matches topics with exactly len(inner) levels.
    if n_o == len(i_):
        return True
    return n_o == len(i_) + 1 and o[-1] == "#"


def filters_overlap(a: str, b: str) -> bool:
    """True when some topic name is matched by both plain, valid filters.

    Used by the ACL: a deny rule refuses a subscription that could receive any
    topic the rule denies.
    """
    x = a.split("/")
    y = b.split("/")
    # The '$' rule: a filter starting with a wildcard matches no '$' topic, so it
    # shares nothing with a filter whose first level is a literal starting with '$'.
    if (x[0] in ("+", "#") and y[0].startswith("$") and y[0] not in ("+", "#")) or (
        y[0] in ("+", "#") and x[0].startswith("$") and x[0] not in ("+", "#")
    ):
        return False
    n = min(len(x), len(y))
    for k in range(n):
        p, q = x[k], y[k]
        if p == "#" or q == "#":
            return True
        if p == "+" or q == "+" or p == q:
            continue
        return False
    if len(x) == len(y):
        return True
    longer = x if len(x) > len(y) else y
    return len(longer) == n + 1 and longer[n] == "#"


def filter_intersection(a: str, b: str) -> str | None:
    """The filter matching exactly the topics both plain, valid filters match, or None.

    Used by the ACL to find what a subscription can read through one rule:
    ``a/#`` and ``+/b/+`` give ``a/b/+``; ``a/#`` and ``a`` give ``a`` (``a/#`` matches
    its parent); ``#`` and ``$SYS/x`` give None (the ``$`` rule).
    """
    x = a.split("/")
    y = b.split("/")
    if (x[0] in ("+", "#") and y[0].startswith("$")) or (y[0] in ("+", "#") and x[0].startswith("$")):
        return None
    out: list[str] = []
    n = min(len(x), len(y))
    for k in range(n):
        p, q = x[k], y[k]
        if p == "#":
            return "/".join(out + y[k:])
        if q == "#":
            return "/".join(out + x[k:])
        if p == "+":
            out.append(q)
        elif q == "+" or p == q:
            out.append(p)
        else:
            return None
    if len(x) == len(y):
        return "/".join(out)
    longer = x if len(x) > len(y) else y
    if len(longer) == n + 1 and longer[n] == "#":
        return "/".join(out)  # "a/#" also matches "a"
    return None


# --------------------------------------------------------------------------- the trie


class SharedGroup:
    """One shared subscription group: a name on one inner filter, with its members.

    ``members`` maps subscriber key -> value in joining order. ``pick()`` hands
    out members round robin. Do not mutate ``members`` directly; use the trie.
    """

    __slots__ = ("name", "filter", "topic_filter", "members", "_order", "_next")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.topic_filter = topic_filter
        self.filter = f"{SHARE_PREFIX}{name}/{topic_filter}"
        self.members: dict[Hashable, Any] = {}
        self._order: list[Hashable] = []
        self._next = 0

    def pick(self, accept: Callable[[Hashable], bool] | None = None) -> tuple[Hashable, Any] | None:
        """The next member round robin as ``(key, value)``, or ``None``.

        With ``accept``, members for which it returns False are skipped (for
        example a member whose send queue is full); ``None`` when nobody accepts.
        """
        order = self._order
        n = len(order)
        if n == 0:
            return None
        start = self._next % n
        for step in range(n):
            idx = (start + step) % n
            key = order[idx]
            if accept is None or accept(key):
                self._next = idx + 1
                return key, self.members[key]
        return None

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return f"SharedGroup({self.filter!r}, members={list(self._order)!r})"


class _Node:
    __slots__ = ("children", "subs", "shared")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None  # allocated on the first child (most nodes are leaves)
        self.subs: dict[Hashable, tuple[Hashable, Any, str]] | None = None
        self.shared: dict[str, SharedGroup] | None = None


_EMPTY: tuple = ()


class TopicTrie:
    """Subscriptions keyed by (filter, subscriber key), each with a value.

    ``add``/``remove`` take the filter exactly as the client sent it (plain or
    ``$share/g/f``); filters must already be valid (``validate_topic_filter``)
    and topics passed to ``match*`` valid topic names. Not thread safe: owned by
    the router, used from one trio task at a time.
    """

    __slots__ = ("_root", "_count", "_cache", "_cache_size")

    def __init__(self, cache_size: int = 4096) -> None:
        self._root = _Node()
        self._count = 0
        self._cache: dict[str, tuple[tuple, tuple]] = {}
        self._cache_size = cache_size

    def __len__(self) -> int:
        """Number of (filter, key) entries, shared members included."""
        return self._count

    # -- updates

    def _invalidate(self, topic_filter: str) -> None:
        if not self._cache:
            return
        if "+" in topic_filter or "#" in topic_filter:
            self._cache.clear()
        else:
            self._cache.pop(topic_filter, None)

    def add(self, filt: str, key: Hashable, value: Any = None) -> bool:
        """Store ``value`` for (filt, key). True if new, False if it replaced one."""
        group, topic_filter = parse_shared(filt)
        node = self._root
        for level in topic_filter.split("/"):
            children = node.children
            if children is None:
                children = node.children = {}
            child = children.get(level)
            if child is None:
                child = children[level] = _Node()
            node = child
        self._invalidate(topic_filter)
        if group is None:
            subs = node.subs
            if subs is None:
                subs = node.subs = {}
            new = key not in subs
            subs[key] = (key, value, filt)
        else:
            shared = node.shared
            if shared is None:
                shared = node.shared = {}
            g = shared.get(group)
            if g is None:
                g = shared[group] = SharedGroup(group, topic_filter)
            new = key not in g.members
            if new:
                g._order.append(key)
            g.members[key] = value
        if new:
            self._count += 1
        return new

    def remove(self, filt: str, key: Hashable) -> bool:
        """Remove (filt, key). True if it existed. Prunes nodes left empty."""
        group, topic_filter = parse_shared(filt)
        path: list[tuple[_Node, str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level) if node.children else None
            if child is None:
                return False
            path.append((node, level))
            node = child
        if group is None:
            subs = node.subs
            if not subs or key not in subs:
                return False
            del subs[key]
            if not subs:
                node.subs = None
        else:
            shared = node.shared
            g = shared.get(group) if shared else None
            if g is None or key not in g.members:
                return False
            del g.members[key]
            idx = g._order.index(key)
            del g._order[idx]
            if idx < g._next:
                g._next -= 1  # keep the round robin on the member that was next
            if not g.members:
                del shared[group]  # type: ignore[union-attr]
                if not shared:
                    node.shared = None
        self._count -= 1
        self._invalidate(topic_filter)
        # Prune from the leaf upwards while nodes hold nothing.
        for parent, level in reversed(path):
            if node.subs or node.shared or node.children:
                break
            del parent.children[level]  # type: ignore[union-attr]
            if not parent.children:
                parent.children = None
            node = parent
        return True

    def get(self, filt: str, key: Hashable, default: Any = None) -> Any:
        """The value stored for (filt, key), or ``default``."""
        group, topic_filter = parse_shared(filt)
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.get(level) if node.children else None  # type: ignore[assignment]
            if node is None:
                return default
        if group is None:
            entry = node.subs.get(key) if node.subs else None
            return default if entry is None else entry[1]
        g = node.shared.get(group) if node.shared else None
        if g is None:
            return default
        return g.members.get(key, default)

    def __contains__(self, item: tuple[str, Hashable]) -> bool:
        sentinel = object()
        return self.get(item[0], item[1], sentinel) is not sentinel

    # -- matching

    def _walk(self, topic: str) -> tuple[tuple, tuple]:
        subs: list = []
        groups: list = []
        levels = topic.split("/")
        nodes = [self._root]
        skip_wild = topic[:1] == "$"  # [MQTT-4.7.2-1]: only at the first level
        for level in levels:
            alive = []
            for node in nodes:
                children = node.children
                if not children:
                    continue
                if not skip_wild:
                    hash_node = children.get("#")
                    if hash_node is not None:
                        if hash_node.subs:
                            subs.extend(hash_node.subs.values())
                        if hash_node.shared:
                            groups.extend(hash_node.shared.values())
                    plus = children.get("+")
                    if plus is not None:
                        alive.append(plus)
                exact = children.get(level)
                if exact is not None:
                    alive.append(exact)
            if not alive:
                break
            nodes = alive
            skip_wild = False
        else:
            for node in nodes:
                if node.subs:
                    subs.extend(node.subs.values())
                if node.shared:
                    groups.extend(node.shared.values())
                hash_node = node.children.get("#") if node.children else None
                if hash_node is not None:
                    if hash_node.subs:
                        subs.extend(hash_node.subs.values())
                    if hash_node.shared:
                        groups.extend(hash_node.shared.values())
        return (tuple(subs) if subs else _EMPTY, tuple(groups) if groups else _EMPTY)

    def match_all(self, topic: str) -> tuple[tuple[tuple[Hashable, Any, str], ...], tuple[SharedGroup, ...]]:
        """``(plain, groups)`` for a topic name, from one (cached) walk.

        ``plain``: ``(key, value, filter)`` for every plain subscription whose
        filter matches; a key appears once per matching filter (overlapping
        subscriptions are the router's to merge). ``groups``: each matching
        shared group once. Both are tuples; do not hold them across updates.
        """
        cache = self._cache
        hit = cache.get(topic)
        if hit is not None:
            return hit
        result = self._walk(topic)
        if self._cache_size > 0:
            if len(cache) >= self._cache_size:
                del cache[next(iter(cache))]
            cache[topic] = result
        return result

    def match(self, topic: str) -> tuple[tuple[Hashable, Any, str], ...]:
        """Plain subscriptions matching ``topic``: ``(key, value, filter)`` triples."""
        return self.match_all(topic)[0]

    def match_shared(self, topic: str) -> tuple[SharedGroup, ...]:
        """Shared groups matching ``topic``, each once."""
        return self.match_all(topic)[1]

    # -- inspection

    def entries(self) -> Iterator[tuple[str, Hashable, Any]]:
        """Every ``(filter, key, value)``, shared members under ``$share/g/f``."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.subs:
                for key, value, filt in node.subs.values():
                    yield filt, key, value
            if node.shared:
                for g in node.shared.values():
                    for key, value in g.members.items():
                        yield g.filter, key, value
            if node.children:
                stack.extend(node.children.values())

    def node_count(self) -> int:
        """Trie nodes below the root (for tests and $SYS: proves pruning)."""
        n = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.children:
                n += len(node.children)
                stack.extend(node.children.values())
        return n
