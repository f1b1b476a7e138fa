"""Routing (where a conversation goes) and assignment (who takes it). Pure.

Routing is a decision table read top to bottom; the first row whose every condition
holds decides team, priority and handler (bot or human). An empty condition matches
anything; intents are shell-style patterns (``card_*``). Example rows::

    name              intent                 sentiment  tier  channel  hours   -> team     priority  handler
    lost-card         lost_or_stolen_card    *          *     *        *       -> vip      urgent    human
    angry-vip         *                      negative   vip   *        *       -> vip      high      human
    night             *                      *          *     *        closed  -> general  normal    bot
    (default)                                                                  -> general  normal    bot

Assignment, given the waiting conversations and the agents with their loads:

* waiting conversations are taken strictly in ``queue_key`` order -- priority first
  (an urgent one in any team is considered before every normal one), requeued ones
  at the front of their priority level, then FIFO by queue sequence;
* a conversation goes only to an agent that is online, has free capacity, is in the
  conversation's team, has its skills and VIP tier, and has not let an offer for it
  lapse (unless every such agent has: then they are all tried again);
* among those, the least loaded (fewest open conversations) wins; ties go to the
  one that got an assignment least recently (round robin via ``Agent.rr``).

The planner simulates the loads it creates, so one pass fills every free slot it
can; the desk commits each assignment with a compare-and-set and replans on conflict.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .agents import Agent, AgentStatus, eligible
from .conversations import PRIORITIES, Conversation, Status, priority_rank

ANY = "*"
HANDLERS = ("bot", "human")
SENTIMENTS = ("negative", "neutral", "positive")


@dataclass(frozen=True)
class Rule:
    name: str
    team: str
    priority: int
    handler: str
    intent: tuple[str, ...] = ()
    sentiment: tuple[str, ...] = ()
    tier: tuple[str, ...] = ()
    channel: tuple[str, ...] = ()
    hours: str = "any"  # "any" | "open" | "closed"
    skills: frozenset[str] = frozenset()
    min_tier: int = 0

    def matches(self, f: "Facts") -> bool:
        if self.intent and not any(fnmatch.fnmatchcase(f.intent or "", p) for p in self.intent):
            return False
        if self.sentiment and (f.sentiment or "neutral") not in self.sentiment:
            return False
        if self.tier and (f.tier or "") not in self.tier:
            return False
        if self.channel and f.channel not in self.channel:
            return False
        if self.hours == "open" and not f.open:
            return False
        if self.hours == "closed" and f.open:
            return False
        return True

    def row(self) -> list[str]:
        def cell(v: tuple[str, ...]) -> str:
            return ",".join(v) if v else ANY

        return [
            self.name,
            cell(self.intent),
            cell(self.sentiment),
            cell(self.tier),
            cell(self.channel),
            ANY if self.hours == "any" else self.hours,
            self.team,
            PRIORITIES[self.priority],
            self.handler,
        ]


@dataclass(frozen=True)
class Facts:
    """What routing knows about a conversation when it decides."""

    intent: str | None
    sentiment: str | None
    tier: str | None
    channel: str
    open: bool  # inside business hours


@dataclass(frozen=True)
class Route:
    rule: str
    team: str
    priority: int
    handler: str
    skills: frozenset[str] = frozenset()
    min_tier: int = 0


def _tuple(v) -> tuple[str, ...]:
    if isinstance(v, str):
        return () if v in ("", ANY) else (v,)
    return tuple(x for x in v if x != ANY)


def rule_from_config(entry, index: int) -> Rule:
    """A ``[[routing.rules]]`` entry -> Rule; raises ValueError naming the bad key."""
    where = f"routing.rules[{index}]"
    if entry.handler not in HANDLERS:
        raise ValueError(f"{where}.handler: expected one of bot, human")
    for s in _tuple(entry.sentiment):
        if s not in SENTIMENTS:
            raise ValueError(f"{where}.sentiment: {s!r} is not one of {', '.join(SENTIMENTS)}")
    if entry.hours not in ("any", "open", "closed"):
        raise ValueError(f"{where}.hours: expected any, open or closed")
    try:
        prio = priority_rank(entry.priority)
    except ValueError as e:
        raise ValueError(f"{where}.{e}") from None
    if not entry.team:
        raise ValueError(f"{where}.team: must name a team")
    return Rule(
        name=entry.name or f"rule{index}",
        team=entry.team,
        priority=prio,
        handler=entry.handler,
        intent=_tuple(entry.intent),
        sentiment=_tuple(entry.sentiment),
        tier=_tuple(entry.tier),
        channel=_tuple(entry.channel),
        hours=entry.hours,
        skills=frozenset(entry.skills),
        min_tier=entry.min_tier,
    )


class Router:
    """The decision table with its default row."""

    def __init__(self, rules: Sequence[Rule], default: Route) -> None:
        self.rules = list(rules)
        self.default = default

    def decide(self, f: Facts) -> Route:
        for r in self.rules:
            if r.matches(f):
                return Route(r.name, r.team, r.priority, r.handler, r.skills, r.min_tier)
        return self.default

    def table(self) -> str:
        """The table as aligned text (for `kefu desk rules` and the docs)."""
        head = ["name", "intent", "sentiment", "tier", "channel", "hours", "team", "priority", "handler"]
        d = self.default
        rows = [r.row() for r in self.rules] + [
            ["(default)", ANY, ANY, ANY, ANY, ANY, d.team, PRIORITIES[d.priority], d.handler]
        ]
        widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()  # noqa: E731
        return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


# --- assignment -------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    conv_id: str
    agent_id: str
    rr: int  # the round-robin stamp the agent gets with it


def plan(
    waiting: Iterable[Conversation], agents: Sequence[Agent], loads: Mapping[str, int]
) -> list[Assignment]:
    """Which waiting conversation goes to which agent, now. Pure."""
    return plan_ordered(sorted((c for c in waiting if c.status == Status.QUEUED), key=Conversation.queue_key),
                        agents, loads)


def free_teams(agents: Sequence[Agent], loads: Mapping[str, int]) -> set[str]:
    """Teams with at least one online agent below capacity: the only queues a pass can serve."""
    return {t for a in agents if a.status == AgentStatus.ONLINE and loads.get(a.id, 0) < a.capacity for t in a.teams}


def plan_ordered(
    order: Iterable[Conversation], agents: Sequence[Agent], loads: Mapping[str, int]
) -> list[Assignment]:
    """``plan`` for conversations already in ``queue_key`` order (the store keeps its queues so).

    Cost is bounded by what can be assigned, not by how many wait: candidates are looked
    for only among the online members of the conversation's team, a team whose members
    are all full is skipped in O(1), and the pass stops once no team has a free slot.
    """
    online = [a for a in agents if a.status == AgentStatus.ONLINE]
    if not online:
        return []
    load = {a.id: loads.get(a.id, 0) for a in online}
    rr = {a.id: a.rr for a in online}
    members: dict[str, list[Agent]] = {}
    free: dict[str, int] = {}  # team -> free slots among its online members
    for a in online:
        for t in a.teams:
            members.setdefault(t, []).append(a)
            free[t] = free.get(t, 0) + max(0, a.capacity - load[a.id])
    open_teams = sum(1 for v in free.values() if v > 0)
    stamp = max((a.rr for a in agents), default=0)
    out: list[Assignment] = []
    for conv in order:
        if open_teams == 0:
            break
        team = conv.team or ""
        if free.get(team, 0) <= 0 or conv.status != Status.QUEUED:
            continue
        team_agents = members[team]
        cands = [a for a in team_agents if eligible(a, load[a.id], team, conv.skills, conv.min_tier, conv.declined)]
        if not cands and conv.declined:
            cands = [a for a in team_agents if eligible(a, load[a.id], team, conv.skills, conv.min_tier, frozenset())]
        if not cands:
            continue
        pick = min(cands, key=lambda a: (load[a.id], rr[a.id], a.id))
        stamp += 1
        load[pick.id] += 1
        rr[pick.id] = stamp
        for t in pick.teams:
            free[t] -= 1
            if free[t] == 0:
                open_teams -= 1
        out.append(Assignment(conv.id, pick.id, stamp))
    return out


def positions(waiting: Iterable[Conversation]) -> dict[str, tuple[str, int]]:
    """conv id -> (team, 1-based position within its team's queue)."""
    by_team: dict[str, list[Conversation]] = {}
    for c in waiting:
        if c.status == Status.QUEUED:
            by_team.setdefault(c.team or "", []).append(c)
    out: dict[str, tuple[str, int]] = {}
    for team, convs in by_team.items():
        for i, c in enumerate(sorted(convs, key=Conversation.queue_key), 1):
            out[c.id] = (team, i)
    return out


def estimated_wait(position: int, team: str, agents: Iterable[Agent], handle_seconds: float) -> float | None:
    """Seconds until a conversation at ``position`` is likely taken.

    Each of the team's S concurrent slots (capacity of its online agents) frees up once
    per average handle time H, so one frees every H/S seconds and position k waits
    about k*H/S. None when nobody in the team is online (the wait is unbounded).
    """
    slots = sum(a.capacity for a in agents if a.status == AgentStatus.ONLINE and team in a.teams)
    if slots <= 0:
        return None
    return math.ceil(position * handle_seconds / slots)
