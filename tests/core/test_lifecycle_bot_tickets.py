"""Pure parts: the conversation state machine, the bot's decisions, tickets, SLA, alarms, hours."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from kefu import conversations as C
from kefu import tickets as T
from kefu.bot import Answer, Answers, AnswersError, BotSettings, decide, load_answers, parse_answers
from kefu.config import from_dict
from kefu.conversations import Status, TransitionError
from kefu.events import EVENT_TYPES
from kefu.hours import from_config as hours_from_config
from kefu.routing import Route

from .conftest import ROOT, Pred

# --- lifecycle ---------------------------------------------------------------------------


def test_happy_path_emits_an_event_per_transition():
    c, evs = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    assert c.status == Status.BOT and [e.type for e in evs] == ["conversation_created"]
    c, evs = C.enqueue(c, team="general", priority=2, seq=1, now=1, reason="human_requested")
    assert (c.status, evs[0].data["from"], evs[0].data["to"]) == (Status.QUEUED, "bot", "queued")
    c, evs = C.offer(c, "alice", 2, deadline=32)
    assert c.assignee == "alice" and not c.accepted
    assert [e.type for e in evs] == ["conversation_status_changed", "conversation_assigned"]
    c, evs = C.accept(c, "alice", 3)
    assert c.accepted and [e.type for e in evs] == ["assignment_accepted"]
    c, evs = C.resolve(c, 4, by="alice")
    assert c.status == Status.RESOLVED and c.assignee is None and c.last_assignee == "alice"
    assert [e.type for e in evs] == ["conversation_status_changed", "csat_requested"]
    c, evs = C.rate(c, 5, "great", 5)
    assert c.csat == 5 and evs[0].data["agent"] == "alice"
    c, evs = C.close(c, 10)
    assert c.status == Status.CLOSED
    for e in evs:
        assert e.type in EVENT_TYPES


def test_illegal_moves_raise():
    c, _ = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    with pytest.raises(TransitionError, match="cannot assign while bot"):
        C.offer(c, "a", 0, None)
    q, _ = C.enqueue(c, team="g", priority=2, seq=1, now=0, reason="x")
    o, _ = C.offer(q, "a", 0, 30)
    with pytest.raises(TransitionError, match="assigned to a, not b"):
        C.accept(o, "b", 1)
    with pytest.raises(TransitionError):
        C.rate(o, 5, None, 1)
    with pytest.raises(ValueError):
        C.rate(C.resolve(o, 1, by="a")[0], 6, None, 2)


def test_requeue_goes_to_the_front_and_remembers_who_let_it_lapse():
    c, _ = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    c, _ = C.enqueue(c, team="g", priority=2, seq=7, now=0, reason="x")
    later, _ = C.enqueue(C.open_conversation("cv-2", "cu2", "main", "chat", 0)[0], team="g", priority=2, seq=3,
                         now=0, reason="x")
    c, _ = C.offer(c, "a", 1, 31)
    c, evs = C.requeue_front(c, 31, reason="accept_timeout", decline=True)
    assert c.status == Status.QUEUED and c.declined == {"a"} and c.assignee is None
    assert c.queue_key() < later.queue_key()  # ahead of an older, never-offered conversation
    assert evs[0].data["previous_assignee"] == "a"


def test_transfer_and_reopen_window():
    c, _ = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    c, _ = C.enqueue(c, team="g", priority=2, seq=1, now=0, reason="x")
    c, _ = C.offer(c, "a", 1, None)
    c, evs = C.transfer_to_agent(c, "b", 2, None, by="a")
    assert c.assignee == "b" and evs[0].data["reason"] == "transfer" and evs[0].data["previous_assignee"] == "a"
    with pytest.raises(TransitionError):
        C.transfer_to_agent(c, "b", 3, None, by="a")
    r, _ = C.resolve(c, 100, by="b")
    assert C.can_reopen(r, 150, 60) and not C.can_reopen(r, 161, 60)


def test_serialisation_round_trip():
    c, _ = C.open_conversation("cv-1", "cu", "main", "chat", 0)
    c = replace(c, labels=frozenset({"x"}), declined=frozenset({"a"}), skills=frozenset({"s"}))
    assert C.Conversation.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    t, _ = T.open_ticket("tk-1", "t", source="alarm", priority=1, now=0, sla=T.SlaTargets((1, 2, 3, 4), (5, 6, 7, 8)))
    t = replace(t, breached=frozenset({"resolution"}), comments=({"at": 1, "author": "x", "text": "y"},))
    assert T.Ticket.from_dict(json.loads(json.dumps(t.to_dict()))) == t


# --- bot -----------------------------------------------------------------------------------

ANS = Answers({"days": "3-5"}, {"card_arrival": Answer("Arrives in {days} days, {contact.name|friend}.", "Try again later."),
                               "exchange_rate": Answer("Interbank.")})
BOT = BotSettings()
ROUTE_BOT = Route("(default)", "general", 2, "bot")


def turn(text, pred, route=ROUTE_BOT, last=None, failures=0, contact=None):
    return decide(text, pred, route=route, answers=ANS, settings=BOT, last_intent=last, failures=failures,
                  contact=contact or {})


def test_confident_faq_gets_its_answer_with_variables():
    r = turn("when does my card arrive", Pred("card_arrival", 0.9))
    assert (r.action, r.text) == ("answer", "Arrives in 3-5 days, friend.")
    assert turn("x", Pred("card_arrival", 0.9), contact={"name": "Ann"}).text == "Arrives in 3-5 days, Ann."


@pytest.mark.parametrize(
    "text, pred, route, reason",
    [
        ("I want to talk to a human", Pred("card_arrival", 0.99), ROUTE_BOT, "human_requested"),
        ("转人工", Pred("card_arrival", 0.99), ROUTE_BOT, "human_requested"),
        ("my card was stolen", Pred("lost_or_stolen_card", 0.99), Route("lost", "vip", 0, "human"), "rule:lost"),
        ("this is useless", Pred("card_arrival", 0.99, sentiment="negative"), ROUTE_BOT, "negative_sentiment"),
        ("weather?", Pred("weather", 0.99, out_of_scope=True), ROUTE_BOT, "out_of_scope"),
        ("hmm", Pred("card_arrival", 0.3), ROUTE_BOT, "low_confidence"),
        ("pin", Pred("change_pin", 0.99), ROUTE_BOT, "no_answer"),
    ],
)
def test_handoffs(text, pred, route, reason):
    r = turn(text, pred, route)
    assert (r.action, r.reason) == ("handoff", reason)


def test_agents_word_inside_another_word_is_not_a_request():
    assert turn("my agenda card arrives?", Pred("card_arrival", 0.9)).action == "answer"


def test_second_failed_answer_hands_off():
    first = turn("when does my card arrive", Pred("card_arrival", 0.9))
    assert first.action == "answer" and not first.failed
    again = turn("my card still has not arrived", Pred("card_arrival", 0.9), last="card_arrival", failures=0)
    assert (again.action, again.failed, again.text) == ("answer", True, "Try again later.")
    third = turn("that didn't help", Pred("card_not_working", 0.1), last="card_arrival", failures=1)
    assert (third.action, third.reason) == ("handoff", "bot_failed")
    plain = turn("that didn't help", Pred("x", 0.1), last="exchange_rate", failures=0)
    assert plain.text == "Let me try again: Interbank."


def test_answers_file_errors_name_the_key():
    with pytest.raises(AnswersError, match=r"answers.x.text: unknown variable \{nope\}"):
        parse_answers({"answers": {"x": {"text": "hi {nope}"}}})
    with pytest.raises(AnswersError, match="answers.x.text: required"):
        parse_answers({"answers": {"x": {}}})
    with pytest.raises(AnswersError, match="not an intent the classifier knows"):
        parse_answers({"answers": {"x": {"text": "a"}}}, known_intents=frozenset({"y"}))


def test_shipped_answers_file_covers_only_banking77_intents():
    cats = ROOT.parent / "shared" / "data" / "banking77" / "categories.json"
    known = frozenset(json.loads(cats.read_text())) if cats.exists() else None
    ans = load_answers(ROOT / "config" / "answers.toml", known)
    assert len(ans.answers) >= 30
    assert "lost_or_stolen_card" not in ans.answers  # always a person
    for intent in ("card_arrival", "exchange_rate", "top_up_limits"):
        assert "{" not in ans.render(ans.answers[intent].text, {"name": "Ann"})


# --- tickets, SLA, alarms --------------------------------------------------------------------

SLA = T.SlaTargets((60, 300, 900, 3600), (600, 3000, 9000, 36000))


def test_sla_deadlines_breach_once_and_stop_when_met():
    t, evs = T.open_ticket("tk-1", "x", source="conversation", priority=0, now=100, sla=SLA)
    assert (t.first_response_due, t.resolution_due) == (160, 700) and evs[0].type == "ticket_created"
    assert T.next_deadline(t) == 160 and T.due_breaches(t, 159) == []
    t, evs = T.breach(t, T.due_breaches(t, 160), 160)
    assert [e.data["sla"] for e in evs] == ["first_response"] and T.due_breaches(t, 500) == []
    assert T.next_deadline(t) == 700
    t, _ = T.responded(t, 200, "alice")
    t, _ = T.resolve_ticket(t, 650, by="alice")
    assert T.due_breaches(t, 10_000) == [] and T.next_deadline(t) is None


def test_reprioritise_recomputes_from_creation():
    t, _ = T.open_ticket("tk-1", "x", source="alarm", priority=2, now=0, sla=SLA)
    t, evs = T.reprioritise(t, 0, 10, SLA)
    assert (t.first_response_due, t.resolution_due) == (60, 600) and evs[0].data["change"] == "priority"


def test_alarm_parsing_mapping_and_decisions():
    m = T.AlarmMapping(device_field="dev.id", type_field="kind")
    a = T.parse_alarm(b'{"dev": {"id": "pump-7"}, "kind": "overheat", "severity": "Critical", "message": "92C"}', m,
                      topic_device=None)
    assert (a.device_id, a.type, a.priority, a.recovered) == ("pump-7", "overheat", 0, False)
    assert T.alarm_title(a) == "overheat on pump-7 (critical): 92C"
    assert T.decide_alarm(None, a).action == "open"
    t, _ = T.open_ticket("tk-1", "x", source="alarm", priority=2, now=0, sla=SLA, device_id="pump-7", alarm_type="overheat")
    assert T.decide_alarm(t, a) == T.AlarmDecision("repeat", 0)
    ok = T.parse_alarm(b'{"dev": {"id": "pump-7"}, "kind": "overheat", "state": "OK"}', m, topic_device=None)
    assert ok.recovered and T.decide_alarm(t, ok).action == "recover" and T.decide_alarm(None, ok).action == "ignore"
    for bad, msg in [(b"nope", "not JSON"), (b"[1]", "JSON object"), (b'{"kind": "x"}', "device id"),
                     (b'{"dev": {"id": "p"}}', "'kind'")]:
        with pytest.raises(T.AlarmError, match=msg):
            T.parse_alarm(bad, m, topic_device=None)


def test_business_hours_with_midnight_span_and_holidays():
    cfg = from_dict({"business_hours": {"enabled": True, "timezone": "Europe/Berlin", "mon": "09:00-17:00",
                                        "fri": "22:00-02:00", "holidays": ["2026-12-25"]}})
    h = hours_from_config(cfg.business_hours)
    import datetime as dt

    def at(s):
        return dt.datetime.fromisoformat(s).replace(tzinfo=h.tz).timestamp()

    assert h.is_open(at("2026-11-30T09:00"))  # a Monday
    assert not h.is_open(at("2026-11-30T17:00"))
    assert h.is_open(at("2026-12-04T23:30")) and h.is_open(at("2026-12-05T01:59"))  # Friday night into Saturday
    assert not h.is_open(at("2026-12-05T02:00"))
    assert not h.is_open(at("2026-12-25T10:00"))  # a Friday, but a holiday
    with pytest.raises(ValueError, match="business_hours.timezone"):
        hours_from_config(replace(cfg.business_hours, timezone="Mars/Olympus"))
