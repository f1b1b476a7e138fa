"""Agents: who they are (from config) and their presence (online / away / offline).

Presence rules: sign-in makes an agent online; "away" keeps its conversations but
takes no new ones; "offline" (explicit, a dropped connection, or no keepalive for
``[desk] agent_keepalive`` seconds) hands every conversation it holds back to the
front of its queue. These functions are pure; the desk applies what they return.
An agent's load is not stored on it: it is the number of conversations assigned to
it, which the store indexes (one fact, one place).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any, Iterable

from .events import AGENT_STATUS_CHANGED, Event
from .topics import check_id


class AgentStatus(str, enum.Enum):
    ONLINE = "online"
    AWAY = "away"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Agent:
    id: str
    name: str = ""
    teams: frozenset[str] = frozenset()
    skills: frozenset[str] = frozenset()
    capacity: int = 5
    tier: int = 0  # VIP tier: conversations with min_tier > tier never reach this agent
    status: AgentStatus = AgentStatus.OFFLINE
    last_seen: float = 0.0
    rr: int = 0  # round robin: the assignment counter value when this agent last got one
    language: str = ""  # console language (en, zh-CN); "": the browser's
    version: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "teams": sorted(self.teams),
            "skills": sorted(self.skills),
            "capacity": self.capacity,
            "tier": self.tier,
            "status": self.status.value,
            "language": self.language,
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["status"] = self.status.value
        d["teams"] = sorted(self.teams)
        d["skills"] = sorted(self.skills)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Agent":
        d = dict(d)
        d["status"] = AgentStatus(d["status"])
        d["teams"] = frozenset(d.get("teams") or ())
        d["skills"] = frozenset(d.get("skills") or ())
        return cls(**d)


def from_config(entry: Any) -> Agent:
    """An ``[[agents]]`` entry -> an Agent (offline until it signs in)."""
    check_id("agents.id", entry.id)
    for t in entry.teams:
        check_id("agents.teams", t)
    return Agent(
        id=entry.id,
        name=entry.name or entry.id,
        teams=frozenset(entry.teams),
        skills=frozenset(entry.skills),
        capacity=entry.capacity,
        tier=entry.tier,
        language=getattr(entry, "language", ""),
    )


def merge_config(stored: Agent | None, configured: Agent) -> Agent:
    """Config owns identity, teams, skills, capacity and tier; the store owns presence and the
    agent's own choice of console language (config's language only fills in until it chooses)."""
    if stored is None:
        return configured
    return replace(
        stored,
        name=configured.name,
        teams=configured.teams,
        skills=configured.skills,
        capacity=configured.capacity,
        tier=configured.tier,
        language=stored.language or configured.language,
    )


def set_status(agent: Agent, status: AgentStatus, now: float, *, reason: str) -> tuple[Agent, list[Event]]:
    new = replace(agent, status=status, last_seen=now if status != AgentStatus.OFFLINE else agent.last_seen)
    if status == agent.status:
        return new, []
    return new, [
        Event(
            AGENT_STATUS_CHANGED,
            {"agent": new.summary(), "from": agent.status.value, "to": status.value, "reason": reason},
            now,
        )
    ]


def keepalive(agent: Agent, now: float) -> Agent:
    return replace(agent, last_seen=now)


def expired(agents: Iterable[Agent], now: float, timeout: float) -> list[str]:
    """Agents that are not offline but have not been heard from for ``timeout`` seconds."""
    if timeout <= 0:
        return []
    return sorted(a.id for a in agents if a.status != AgentStatus.OFFLINE and now - a.last_seen > timeout)


def eligible(agent: Agent, load: int, team: str, skills: frozenset[str], min_tier: int, declined: frozenset[str]) -> bool:
    """May ``agent`` (with ``load`` conversations) take a conversation with these needs right now?"""
    return (
        agent.status == AgentStatus.ONLINE
        and load < agent.capacity
        and team in agent.teams
        and skills <= agent.skills
        and agent.tier >= min_tier
        and agent.id not in declined
    )
