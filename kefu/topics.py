"""The conversation topic scheme, and the ACL that enforces it.

Every party reaches the desk over MQTT topics (the WebSocket bridge maps its JSON
frames onto the same topics), so who may read and write what is decided here, on
topic names alone plus one live fact: which agent a conversation is assigned to.

Scheme (``{p}`` is ``[desk] topic_prefix``, "kefu" by default)::

    {p}/c/{customer}/{thread}/in      customer -> desk     messages, typing, read, csat
    {p}/c/{customer}/{thread}/out     desk -> customer     bot and agent messages
    {p}/c/{customer}/{thread}/events  desk -> customer     status, queue position, typing, read, csat request
    {p}/d/{device}/alarm              device -> desk       alarm messages ([alarms] topic, configurable)
    {p}/agent/{agent}/inbox           desk -> agent        offers, assignments, its conversations' traffic
    {p}/agent/{agent}/ctl             agent -> desk        status, keepalive, accept, pickup
    {p}/agent/{agent}/conv/{conv}     agent -> desk        reply, note, typing, read, resolve, transfer, label
    {p}/team/{team}/queue             desk -> team members the team's waiting conversations
    {p}/desk/events                   desk -> services     every event (console, dashboards, audit)

A *customer* is whoever the broker authenticated as one (a widget visitor or a
device). A *thread* is the customer's own name for a conversation channel ("main",
a widget tab's id): the desk keeps one open conversation per thread and starts a new
one on it after the previous is closed. Conversation ids are made by the desk.

Why the agent writes to its own namespace rather than the customer's: the ACL can
then decide with one lookup (is ``conv`` assigned to this agent right now?) and a
transferred-away agent loses write access the moment the assignment changes, while
subscriptions (checked only when made) never need revoking because the desk is the
only publisher on ``inbox`` and simply stops sending.

The authoriser answers ALLOW, DENY or ABSTAIN; ABSTAIN means "not kefu's namespace,
let the broker's own ACL decide". Subscriptions follow Mosquitto's rule: a filter is
granted when it can read something, and the broker checks every message at delivery
(asking ``subscribe`` again with the topic name, once per client and topic). So a
customer's ``#`` or ``kefu/c/+/out`` is granted and delivers its own conversations
(and, for ``#``, what the broker's ACL allows outside kefu's namespace), never another
customer's; ``kefu/agent/#`` reads nothing for a customer and is refused.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Callable, Literal

from .broker.topics import filters_overlap

ID_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")


def valid_id(s: str) -> bool:
    """Ids used as topic levels: no '/', '+', '#', '$'-prefix, NUL or spaces; 1-64 chars."""
    return bool(ID_RE.match(s))


def check_id(what: str, s: str) -> str:
    if not isinstance(s, str) or not valid_id(s):
        raise ValueError(f"{what} {s!r}: expected 1-64 characters from A-Z a-z 0-9 _ . @ : -")
    return s


@dataclass(frozen=True)
class Topics:
    """Builds and parses the topic names of one desk (one prefix)."""

    prefix: str = "kefu"
    alarm_topic: str = "{p}/d/{device}/alarm"

    # --- builders -------------------------------------------------------------------
    def customer_in(self, customer: str, thread: str) -> str:
        return f"{self.prefix}/c/{customer}/{thread}/in"

    def customer_out(self, customer: str, thread: str) -> str:
        return f"{self.prefix}/c/{customer}/{thread}/out"

    def customer_events(self, customer: str, thread: str) -> str:
        return f"{self.prefix}/c/{customer}/{thread}/events"

    def agent_inbox(self, agent: str) -> str:
        return f"{self.prefix}/agent/{agent}/inbox"

    def agent_ctl(self, agent: str) -> str:
        return f"{self.prefix}/agent/{agent}/ctl"

    def agent_conv(self, agent: str, conv: str) -> str:
        return f"{self.prefix}/agent/{agent}/conv/{conv}"

    def team_queue(self, team: str) -> str:
        return f"{self.prefix}/team/{team}/queue"

    def desk_events(self) -> str:
        return f"{self.prefix}/desk/events"

    def alarm(self, device: str) -> str:
        return self.alarm_topic.format(p=self.prefix, device=device)

    # --- what the desk subscribes to --------------------------------------------------
    def desk_filters(self) -> list[str]:
        """Filters the desk itself consumes (the broker glue subscribes these)."""
        return [
            f"{self.prefix}/c/+/+/in",
            f"{self.prefix}/agent/+/ctl",
            f"{self.prefix}/agent/+/conv/+",
            self.alarm_topic.format(p=self.prefix, device="+"),
        ]

    # --- parsing inbound topics ---------------------------------------------------------
    def parse(self, topic: str) -> "Parsed | None":
        """What an inbound topic addresses, or None when it is not one the desk consumes."""
        lv = topic.split("/")
        pl = self.prefix.split("/")
        n = len(pl)
        if lv[:n] != pl:
            return self._parse_alarm(topic)
        rest = lv[n:]
        if len(rest) == 4 and rest[0] == "c" and rest[3] == "in" and valid_id(rest[1]) and valid_id(rest[2]):
            return Parsed("customer_in", customer=rest[1], thread=rest[2])
        if len(rest) == 3 and rest[0] == "agent" and rest[2] == "ctl" and valid_id(rest[1]):
            return Parsed("agent_ctl", agent=rest[1])
        if len(rest) == 4 and rest[0] == "agent" and rest[2] == "conv" and valid_id(rest[1]) and valid_id(rest[3]):
            return Parsed("agent_conv", agent=rest[1], conv=rest[3])
        return self._parse_alarm(topic)

    def _parse_alarm(self, topic: str) -> "Parsed | None":
        pat = self.alarm_topic.format(p=self.prefix, device="\x00").split("/")
        lv = topic.split("/")
        if len(lv) != len(pat):
            return None
        device = None
        for a, b in zip(pat, lv):
            if a == "\x00":
                if not valid_id(b):
                    return None
                device = b
            elif a != b:
                return None
        return Parsed("alarm", device=device)


@dataclass(frozen=True)
class Parsed:
    kind: Literal["customer_in", "agent_ctl", "agent_conv", "alarm"]
    customer: str | None = None
    thread: str | None = None
    agent: str | None = None
    conv: str | None = None
    device: str | None = None


# --- identities --------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a connection is, as far as the desk is concerned."""

    kind: Literal["customer", "agent", "service"]
    id: str
    teams: frozenset[str] = field(default_factory=frozenset)


ANON_PREFIX = "anon:"  # MQTT clients nobody vouched for: customer "anon:<client id>"
RESERVED_PREFIXES = ("anon:", "anon-")  # "anon-...": the widget's anonymous visitors (bridge/identity.py)


def reserved_customer_id(s: str) -> bool:
    """Ids only kefu hands out (anonymous customers); no proven identity may take one."""
    return s.startswith(RESERVED_PREFIXES)


def identify(
    username: str | None,
    client_id: str,
    *,
    agents: dict[str, frozenset[str]],
    service_users: frozenset[str] = frozenset(),
    agent_prefix: str = "agent:",
    verified_users: frozenset[str] | None = frozenset(),
) -> Principal | None:
    """Map an authenticated broker identity to a principal.

    ``agent:{id}`` usernames are agents (only ids listed in ``agents``, which maps
    agent id -> its teams); usernames in ``service_users`` are trusted services (the
    bridge, the desk). A customer identity must be proven: a username in
    ``verified_users`` (the ``[[auth.users]]`` entries, whose password the broker checked)
    is that customer. Every other client -- no username, or a name nobody verified
    because the broker admits anyone -- is an *anonymous* customer ``anon:{client id}``,
    an id no configured user and no signed-in widget visitor can have, so choosing a
    client id (``-i user-2001``) never makes anyone somebody else. ``verified_users=None``
    trusts every username (only for a broker whose ``on_authenticate`` hooks verify all).
    Returns None for an identity that cannot be used as a topic level (such a client
    gets nothing in kefu's namespace).
    """
    if username and username in service_users:
        return Principal("service", username)
    if username and username.startswith(agent_prefix):
        aid = username[len(agent_prefix):]
        if aid in agents:
            return Principal("agent", aid, frozenset(agents[aid]))
        return None
    if username and (verified_users is None or username in verified_users):
        if not valid_id(username) or reserved_customer_id(username):
            return None
        return Principal("customer", username)
    cid = ANON_PREFIX + client_id
    if not valid_id(cid):
        return None
    return Principal("customer", cid)


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    ABSTAIN = "abstain"  # not kefu's namespace: the broker's own ACL decides


class Acl:
    """Decides publish and subscribe rights on kefu's topics. Pure given ``assignee_of``.

    ``assignee_of(conv_id)`` returns the agent a conversation is assigned (or offered)
    to right now, or None; it is the only live input.
    """

    def __init__(self, topics: Topics, assignee_of: Callable[[str], str | None]) -> None:
        self.t = topics
        self.assignee_of = assignee_of
        self._pl = topics.prefix.split("/")

    # A filter or topic "touches" kefu when some topic in kefu's namespace could match it.
    def _touches(self, levels: list[str]) -> bool:
        for i, want in enumerate(self._pl):
            if i >= len(levels):
                return False
            lv = levels[i]
            if lv == "#":
                return True
            if lv != "+" and lv != want:
                return False
        return True

    def _own_subtree(self, levels: list[str], *head: str) -> bool:
        """True when the filter is literally under prefix/head... (no wildcard before the end of head)."""
        want = self._pl + list(head)
        if len(levels) <= len(want):
            return False
        return levels[: len(want)] == want and all(x not in ("+", "#") for x in want)

    def readable(self, who: Principal | None) -> list[str]:
        """Filters covering every topic in kefu's namespace ``who`` may read (services: all)."""
        if who is None:
            return []
        p = self.t.prefix
        if who.kind == "service":
            return [f"{p}/#"]
        if who.kind == "customer":
            return [f"{p}/c/{who.id}/#"]
        return [f"{p}/agent/{who.id}/#"] + [f"{p}/team/{t}/queue" for t in sorted(who.teams) if valid_id(t)]

    def subscribe(self, who: Principal | None, filt: str) -> Verdict:
        """A subscription to ``filt`` (or, for a topic name, a delivery of it).

        ALLOW when ``who`` may read some topic of kefu's namespace under ``filt`` (the
        broker then checks each message at delivery, asking again with the topic
        name); DENY when ``filt`` lies inside kefu's namespace and nothing there is
        readable; ABSTAIN when it does not touch kefu's namespace, or reaches beyond it
        (``#``, ``+/c/x/out``) and reads nothing inside: the broker's own ACL decides
        the rest, and kefu's topics are still withheld at delivery.
        """
        if filt.startswith("$share/"):
            parts = filt.split("/", 2)
            if len(parts) < 3 or not parts[1]:
                return Verdict.DENY
            filt = parts[2]
        if filt.startswith("$"):
            return Verdict.ABSTAIN  # $SYS and friends never match kefu topics
        lv = filt.split("/")
        if not self._touches(lv):
            return Verdict.ABSTAIN
        if any(filters_overlap(filt, r) for r in self.readable(who)):
            return Verdict.ALLOW
        n = len(self._pl)
        inside = len(lv) > n and lv[:n] == self._pl
        return Verdict.DENY if inside else Verdict.ABSTAIN

    def publish(self, who: Principal | None, topic: str) -> Verdict:
        if "+" in topic or "#" in topic or "\x00" in topic:
            return Verdict.DENY
        lv = topic.split("/")
        if not self._touches(lv) and self.t._parse_alarm(topic) is None:
            return Verdict.ABSTAIN
        if who is None:
            return Verdict.DENY
        if who.kind == "service":
            return Verdict.ALLOW
        p = self.t.parse(topic)
        if p is None:
            return Verdict.DENY
        if who.kind == "customer":
            if p.kind == "customer_in" and p.customer == who.id:
                return Verdict.ALLOW
            if p.kind == "alarm" and p.device == who.id:
                return Verdict.ALLOW
            return Verdict.DENY
        if p.kind == "agent_ctl" and p.agent == who.id:
            return Verdict.ALLOW
        if p.kind == "agent_conv" and p.agent == who.id and self.assignee_of(p.conv) == who.id:
            return Verdict.ALLOW
        return Verdict.DENY
