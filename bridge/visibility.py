"""Who may read which conversation: one rule for every read path.

REST (conversation lists, one conversation, its messages, a contact's conversations,
transcript search), the ``/chat`` ``history`` frame and the live ``/chat`` agent stream
all ask this module, so they cannot disagree (issue 12: an agent of team ``general``
read a VIP conversation and its private note through three of them).

The rule, as in Chatwoot (an agent sees the inboxes it belongs to, administrators see
everything):

* an operator token (the desk itself, administrators) sees every conversation;
* an agent marked ``supervisor = true`` in ``[[agents]]`` sees every conversation;
* any other agent sees a conversation assigned to it, one routed to one of its teams,
  and the common pool (no team and no assignee).
"""

from __future__ import annotations

from typing import Any

from .deskport import Desk, DeskError


def visible(team: str | None, assignee: str | None, agent: str, teams: frozenset[str] | None) -> bool:
    """The rule. ``teams`` None: the agent sees everything (a supervisor)."""
    if teams is None:
        return True
    return assignee == agent or (team is not None and team in teams) or (team is None and assignee is None)


class Visibility:
    """The rule bound to a running desk and its config."""

    def __init__(self, cfg: Any, desk: Desk) -> None:
        self.desk = desk
        self.supervisors = frozenset(a.id for a in getattr(cfg, "agents", ()) if getattr(a, "supervisor", False))

    async def teams_of(self, agent: str | None) -> frozenset[str] | None:
        """None: sees everything (no agent = operator, or a supervisor); else the agent's teams."""
        if agent is None or agent in self.supervisors:
            return None
        try:
            a = await self.desk.agent(agent)
        except DeskError:
            return frozenset()
        return frozenset((a or {}).get("teams") or ())

    async def may_read(self, agent: str | None, conv_id: str) -> bool:
        """May ``agent`` (None: operator) read conversation ``conv_id`` (live in the desk)?"""
        teams = await self.teams_of(agent)
        if teams is None:
            return True
        c = await self.desk.conversation(conv_id)  # NotFound propagates: a 404 either way
        return visible(c.get("team"), c.get("assignee"), agent, teams)

    async def filter(self, agent: str | None, convs: list[dict]) -> list[dict]:
        teams = await self.teams_of(agent)
        if teams is None:
            return convs
        return [c for c in convs if visible(c.get("team"), c.get("assignee"), agent, teams)]
