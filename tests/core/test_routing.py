"""Routing table and assignment planner (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kefu.agents import Agent, AgentStatus
from kefu.config import from_dict
from kefu.conversations import Conversation, Status
from kefu.routing import Facts, Route, Router, Rule, estimated_wait, plan, positions, rule_from_config
from kefu.settings import from_config

ON = AgentStatus.ONLINE


def conv(cid, team="general", prio=2, seq=1, requeued=False, **kw) -> Conversation:
    return Conversation(cid, "cust-" + cid, "main", "chat", Status.QUEUED, 0, 0, team=team, priority=prio, seq=seq,
                        requeued=requeued, **kw)


def agent(aid, teams=("general",), cap=2, status=ON, rr=0, **kw) -> Agent:
    return Agent(aid, aid, frozenset(teams), capacity=cap, status=status, rr=rr, **kw)


ROUTER = Router(
    [
        Rule("lost", "vip", 0, "human", intent=("lost_or_stolen_card", "compromised_card")),
        Rule("angry-vip", "vip", 1, "human", sentiment=("negative",), tier=("vip",)),
        Rule("cards", "general", 2, "bot", intent=("card_*",), channel=("chat",)),
        Rule("night", "general", 3, "bot", hours="closed"),
    ],
    Route("(default)", "general", 2, "bot"),
)


@pytest.mark.parametrize(
    "facts, rule",
    [
        (Facts("lost_or_stolen_card", "neutral", None, "mqtt", True), "lost"),
        (Facts("compromised_card", "positive", "vip", "chat", False), "lost"),  # first match wins
        (Facts("exchange_rate", "negative", "vip", "chat", True), "angry-vip"),
        (Facts("exchange_rate", "negative", "standard", "chat", True), "(default)"),
        (Facts("card_arrival", "neutral", None, "chat", True), "cards"),
        (Facts("card_arrival", "neutral", None, "mqtt", True), "(default)"),
        (Facts("card_arrival", "neutral", None, "mqtt", False), "night"),
        (Facts(None, None, None, "chat", True), "(default)"),
    ],
)
def test_first_matching_row_decides(facts, rule):
    assert ROUTER.decide(facts).rule == rule


def test_table_is_readable():
    text = ROUTER.table()
    lines = text.splitlines()
    assert lines[0].split() == ["name", "intent", "sentiment", "tier", "channel", "hours", "team", "priority", "handler"]
    assert lines[2].split() == ["lost", "lost_or_stolen_card,compromised_card", "*", "*", "*", "*", "vip", "urgent", "human"]
    assert lines[-1].split() == ["(default)", "*", "*", "*", "*", "*", "general", "normal", "bot"]


def test_rules_from_config_and_their_errors():
    cfg = from_dict({
        "teams": [{"id": "general"}, {"id": "vip"}],
        "routing": {"rules": [{"name": "x", "intent": ["a"], "team": "vip", "priority": "urgent", "handler": "human"}]},
    })
    r = rule_from_config(cfg.routing.rules[0], 0)
    assert (r.team, r.priority, r.handler, r.intent) == ("vip", 0, "human", ("a",))
    bad = from_dict({"teams": [{"id": "general"}], "routing": {"rules": [{"team": "nope", "sentiment": ["sad"]}]}})
    with pytest.raises(Exception) as e:
        from_config(bad)
    text = str(e.value)
    assert "routing.rules[0].sentiment" in text


def test_unknown_team_in_rule_is_named():
    bad = from_dict({"teams": [{"id": "general"}], "routing": {"rules": [{"team": "nope"}]},
                     "agents": [{"id": "a", "teams": ["ghost"]}]})
    with pytest.raises(Exception) as e:
        from_config(bad)
    assert "routing.rules[0].team: no team 'nope'" in str(e.value)
    assert "agents[0].teams: no team 'ghost'" in str(e.value)


# --- planner ---------------------------------------------------------------------------


def test_only_online_agents_with_free_capacity_in_the_team():
    agents = [agent("on"), agent("away", status=AgentStatus.AWAY), agent("off", status=AgentStatus.OFFLINE),
              agent("full", cap=1), agent("vip", teams=("vip",))]
    out = plan([conv("1"), conv("2"), conv("3")], agents, {"full": 1})
    assert [(a.conv_id, a.agent_id) for a in out] == [("1", "on"), ("2", "on")]  # "3" waits: no capacity left


def test_least_loaded_then_round_robin():
    agents = [agent("a", cap=5, rr=3), agent("b", cap=5, rr=1), agent("c", cap=5, rr=2)]
    out = plan([conv(str(i), seq=i) for i in range(1, 7)], agents, {"a": 0, "b": 1, "c": 0})
    # loads a0 b1 c0: c (rr 2) before a (rr 3); then b, a, c... always the least loaded, ties by least recent
    assert [a.agent_id for a in out] == ["c", "a", "b", "c", "a", "b"]
    assert [a.rr for a in out] == [4, 5, 6, 7, 8, 9]


def test_strict_priority_across_queues_and_fifo_within():
    agents = [agent("x", teams=("general", "vip"), cap=3)]
    waiting = [conv("n1", prio=2, seq=1), conv("n2", prio=2, seq=2), conv("u", team="vip", prio=0, seq=9),
               conv("h", prio=1, seq=5), conv("n0", prio=2, seq=3, requeued=True)]
    out = plan(waiting, agents, {})
    assert [a.conv_id for a in out] == ["u", "h", "n0"]  # urgent, high, then the requeued normal one first


def test_skills_tier_and_declined_agents():
    agents = [agent("junior", teams=("vip",)), agent("senior", teams=("vip",), tier=2, skills=frozenset({"fraud"}))]
    need = conv("1", team="vip", skills=frozenset({"fraud"}), min_tier=1)
    assert [a.agent_id for a in plan([need], agents, {})] == ["senior"]
    declined = conv("2", team="vip", declined=frozenset({"junior"}))
    assert [a.agent_id for a in plan([declined], agents, {})] == ["senior"]
    # when every eligible agent let the offer lapse, they are all tried again rather than waiting forever
    both = conv("3", team="vip", declined=frozenset({"junior", "senior"}))
    assert len(plan([both], agents, {})) == 1


def test_positions_and_estimated_wait():
    waiting = [conv("a", seq=3), conv("b", seq=1), conv("c", prio=0, seq=7), conv("v", team="vip", seq=2)]
    pos = positions(waiting)
    assert pos == {"c": ("general", 1), "b": ("general", 2), "a": ("general", 3), "v": ("vip", 1)}
    agents = [agent("x", cap=2), agent("y", cap=3), agent("z", cap=10, status=AgentStatus.AWAY)]
    assert estimated_wait(1, "general", agents, 300) == 60  # 5 slots: one frees every 60 s
    assert estimated_wait(10, "general", agents, 300) == 600
    assert estimated_wait(1, "vip", agents, 300) is None


def test_not_queued_conversations_are_ignored():
    assert plan([replace(conv("1"), status=Status.ASSIGNED)], [agent("a")], {}) == []
