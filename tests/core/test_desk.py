"""The desk end to end in one process: trio timers on autojump_clock, published topics as a user sees them."""

from __future__ import annotations

import json

import pytest
import trio

from kefu.bot import Answer, Answers
from kefu.errors import Forbidden, Illegal, Invalid
from kefu.hooks import DeskHooks, HookError, MessageReceived, RouteDecided
from kefu.routing import Route
from kefu.settings import from_file
from kefu.tickets import SlaTargets

from .conftest import ROOT, keyword_classifier, small_settings

OUT = "kefu/c/{}/main/out"
EVENTS = "kefu/c/{}/main/events"
INBOX = "kefu/agent/{}/inbox"


async def start(nursery, make_desk, **kw):
    desk = make_desk(**kw)
    await nursery.start(desk.run)
    return desk


async def test_faq_then_human_then_agent_then_csat(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk)
    r = await desk.customer_message("mqtt", "dev1", "when will my card arrive?")
    assert r["conversation"]["status"] == "bot"
    assert recorder.texts(OUT.format("dev1")) == ["Cards arrive in 3-5 days, friend."]

    r = await desk.customer_message("mqtt", "dev1", "talk to a human please")
    cid = r["conversation"]["id"]
    assert (r["conversation"]["status"], r["conversation"]["team"]) == ("queued", "general")
    queue = [p for p in recorder.on(EVENTS.format("dev1")) if p["type"] == "queue"]
    assert queue[-1] == {"type": "queue", "conversation": cid, "position": 1, "eta_s": None}
    assert "You are number 1 in the queue" in recorder.texts(OUT.format("dev1"))[-1]

    await desk.agent_connected("alice")
    offer = next(p for p in recorder.on(INBOX.format("alice")) if p.get("event") == "assigned")
    assert offer["conversation"]["id"] == cid and offer["offer"]["deadline"] is not None
    assert [m["text"] for m in offer["transcript"]][:2] == ["when will my card arrive?", "Cards arrive in 3-5 days, friend."]
    assert offer["conversation"]["intent"] == "card_arrival"  # the last intent the classifier was sure of
    assert offer["sidebar"]["contact"]["id"] == "dev1"

    await desk.agent_action("alice", "accept", cid)
    assert recorder.texts(OUT.format("dev1"))[-1] == "Alice has joined the conversation."
    await desk.agent_action("alice", "reply", cid, text="Hi, how can I help?")
    assert recorder.texts(OUT.format("dev1"))[-1] == "Hi, how can I help?"
    await desk.customer_message("mqtt", "dev1", "my card does not work")
    assert recorder.texts(INBOX.format("alice"))[-1] == "my card does not work"
    await desk.agent_action("alice", "note", cid, text="customer seems fine")
    assert "customer seems fine" not in recorder.texts(OUT.format("dev1"))  # notes never reach the customer
    await desk.agent_action("alice", "resolve", cid)
    assert recorder.texts(OUT.format("dev1"))[-1].startswith("How did we do?")
    await desk.customer_message("mqtt", "dev1", "5")
    rated = [p for p in recorder.on(INBOX.format("alice")) if p.get("rating") == 5]
    assert rated and (await desk.conversation(cid))["csat"] == 5
    assert (await desk.ticket(offer["conversation"]["ticket_id"]))["status"] == "resolved"


async def test_unaccepted_offer_requeues_at_the_front_and_goes_to_someone_else(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, accept_timeout=30.0)
    await desk.agent_connected("alice")
    a = (await desk.customer_message("chat", "ann", "human please"))["conversation"]["id"]
    assert (await desk.conversation(a))["assignee"] == "alice"
    await desk.agent_action("alice", "status", status="away")  # keeps the offer, takes nothing new
    b = (await desk.customer_message("chat", "ben", "human please"))["conversation"]["id"]
    c = (await desk.customer_message("chat", "cat", "human please"))["conversation"]["id"]
    await trio.sleep(31)
    conv = await desk.conversation(a)
    assert conv["status"] == "queued" and conv["position"] == 1  # ahead of b and c, which came earlier to the queue
    assert [x["id"] for x in await desk.conversations(filters={"status": "queued", "team": "general"})] == [a, b, c]
    await desk.agent_connected("bob")
    assert (await desk.conversation(a))["assignee"] == "bob"  # front of the queue first
    assert (await desk.conversation(b))["assignee"] == "bob"
    assert (await desk.conversation(c))["status"] == "queued"
    with pytest.raises(Forbidden):
        await desk.agent_action("alice", "accept", a)  # too late: it is bob's now


async def test_agent_going_offline_requeues_its_work_at_the_front(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, accept_timeout=0.0)
    await desk.agent_connected("alice")
    ids = [(await desk.customer_message("chat", f"c{i}", "human please"))["conversation"]["id"] for i in range(4)]
    assert [(await desk.conversation(i))["assignee"] for i in ids] == ["alice", "alice", None, None]
    await desk.agent_disconnected("alice")
    waiting = [x["id"] for x in await desk.conversations(filters={"status": "queued"})]
    pos = {i: (await desk.conversation(i))["position"] for i in ids}
    assert pos == {ids[0]: 1, ids[1]: 2, ids[2]: 3, ids[3]: 4} and set(waiting) == set(ids)
    released = [p for p in recorder.on(INBOX.format("alice")) if p.get("released")]
    assert {p["conversation"]["id"] for p in released} == set(ids[:2])
    await desk.agent_connected("bob")
    assert [(await desk.conversation(i))["assignee"] for i in ids[:2]] == ["bob", "bob"]


async def test_missed_keepalive_sets_offline_but_a_live_connection_holds(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, agent_keepalive=60.0, accept_timeout=0.0)
    await desk.agent_action("alice", "sign_in")  # API agent: must keep alive
    await desk.agent_connected("bob")  # connected agent: its connection is the keepalive
    cid = (await desk.customer_message("chat", "ann", "human please"))["conversation"]["id"]
    holder = (await desk.conversation(cid))["assignee"]
    for _ in range(3):
        await trio.sleep(40)
        await desk.agent_action("alice", "keepalive")
    assert (await desk.agent("alice"))["status"] == "online"
    await trio.sleep(100)
    assert (await desk.agent("alice"))["status"] == "offline"
    assert (await desk.agent("bob"))["status"] == "online"
    assert (await desk.conversation(cid))["assignee"] == "bob"
    assert holder in ("alice", "bob")


async def test_sla_breach_fires_once_and_not_when_answered_in_time(nursery, autojump_clock, make_desk, recorder):
    sla = SlaTargets((60, 300, 900, 3600), (600, 3000, 9000, 36000))
    desk = await start(nursery, make_desk, sla=sla, accept_timeout=0.0)
    late = (await desk.customer_message("chat", "ann", "my card was stolen"))["conversation"]
    assert late["priority"] == "urgent" and late["team"] == "vip"
    await trio.sleep(61)
    breaches = [p for p in recorder.on("kefu/desk/events") if p["event"] == "sla_breached"]
    assert [(b["data"]["ticket"]["id"], b["data"]["sla"]) for b in breaches] == [(late["ticket_id"], "first_response")]
    await desk.agent_connected("vera")
    ontime = (await desk.customer_message("chat", "ben", "my card was stolen"))["conversation"]
    await desk.agent_action("vera", "reply", ontime["id"], text="Frozen it for you.")
    await trio.sleep(120)
    breaches = [p for p in recorder.on("kefu/desk/events") if p["event"] == "sla_breached"]
    assert all(b["data"]["ticket"]["id"] != ontime["ticket_id"] for b in breaches)
    # the waiting one also misses resolution later, once
    await trio.sleep(600)
    kinds = [(b["data"]["ticket"]["id"], b["data"]["sla"]) for b in recorder.on("kefu/desk/events")
             if b["event"] == "sla_breached"]
    assert kinds.count((late["ticket_id"], "resolution")) == 1


async def test_reopen_within_window_and_new_conversation_after(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, accept_timeout=0.0, reopen_window=600.0)
    await desk.agent_connected("alice")
    cid = (await desk.customer_message("chat", "ann", "human please"))["conversation"]["id"]
    await desk.agent_action("alice", "resolve", cid)
    await trio.sleep(100)
    r = await desk.customer_message("chat", "ann", "one more thing")
    assert r["conversation"]["id"] == cid and r["conversation"]["status"] == "assigned"  # reopened, back to alice
    await desk.agent_action("alice", "resolve", cid)
    await trio.sleep(601)
    assert (await desk.conversation(cid))["status"] == "closed"
    r = await desk.customer_message("chat", "ann", "when will my new card arrive")
    assert r["conversation"]["id"] != cid and r["conversation"]["status"] == "bot"


async def test_urgent_jumps_ahead_of_earlier_normal_chats(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, accept_timeout=0.0, agents=small_settings().agents[:1] + (
        small_settings().agents[2].__class__("vera", "Vera", frozenset({"vip", "general"}), capacity=1, tier=2),))
    normal = [(await desk.customer_message("chat", f"n{i}", "human please"))["conversation"]["id"] for i in range(3)]
    urgent = (await desk.customer_message("chat", "u", "my card was stolen"))["conversation"]["id"]
    await desk.agent_connected("vera")  # vera serves both teams: the urgent one comes first
    assert (await desk.conversation(urgent))["assignee"] == "vera"
    assert [(await desk.conversation(n))["status"] for n in normal] == ["queued"] * 3
    await desk.agent_connected("alice")
    assert [(await desk.conversation(n))["assignee"] for n in normal] == ["alice", "alice", None]


async def test_transfer_frees_a_slot_and_the_queue_moves(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, accept_timeout=0.0)
    await desk.agent_connected("alice")
    a, b, c = [(await desk.customer_message("chat", f"c{i}", "human please"))["conversation"]["id"] for i in range(3)]
    assert (await desk.conversation(c))["status"] == "queued"
    await desk.agent_connected("vera")
    await desk.agent_action("alice", "transfer", a, team="vip")
    assert (await desk.conversation(a))["assignee"] == "vera"
    assert (await desk.conversation(c))["assignee"] == "alice"  # the freed slot is used at once
    with pytest.raises(Illegal, match="offline"):
        await desk.agent_action("alice", "transfer", b, agent="bob")
    with pytest.raises(Illegal, match="not waiting"):
        await desk.agent_action("bob", "pickup", a)  # someone has it already


async def test_pickup_labels_canned_typing_read(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, canned={"hi": "Hello {contact.name|there}!"}, labels=frozenset({"card"}))
    cid = (await desk.customer_message("chat", "ann", "human please"))["conversation"]["id"]
    await desk.agent_action("bob", "status", status="away")
    await desk.agent_action("bob", "pickup", cid)  # manual pickup: accepted at once
    conv = await desk.conversation(cid)
    assert conv["assignee"] == "bob" and conv["accepted"]
    msg = await desk.agent_action("bob", "reply", cid, canned="hi")
    assert msg["text"] == "Hello there!"
    await desk.agent_action("bob", "labels", cid, labels=["card"])
    with pytest.raises(Invalid, match="unknown"):
        await desk.agent_action("bob", "labels", cid, labels=["nope"])
    await desk.customer_event("ann", "main", "typing", on=True)
    assert {"type": "typing", "conversation": cid, "author": {"kind": "customer", "id": "ann", "name": "ann"},
            "on": True} in recorder.on(INBOX.format("bob"))
    await desk.agent_action("bob", "read", cid, up_to=f"{cid}:1")
    reads = [p for p in recorder.on(EVENTS.format("ann")) if p["type"] == "read"]
    assert reads[-1]["up_to"] == f"{cid}:1" and reads[-1]["author"]["id"] == "bob"
    with pytest.raises(Forbidden):
        await desk.agent_action("alice", "reply", cid, text="not mine")


async def test_business_hours_closed_sends_offline_message(nursery, autojump_clock, make_desk, recorder):
    from kefu.config import from_dict
    from kefu.hours import from_config

    hours = from_config(from_dict({"business_hours": {"enabled": True, "mon": "", "tue": "", "wed": "", "thu": "",
                                                      "fri": "", "sat": "", "sun": ""}}).business_hours)
    desk = await start(nursery, make_desk, hours=hours)
    await desk.customer_message("chat", "ann", "human please")
    assert any(t.startswith("We're closed right now") for t in recorder.texts(OUT.format("ann")))


async def test_device_alarms_open_repeat_recover(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, alarms_enabled=True, alarm_team="general", accept_timeout=0.0)
    hot = json.dumps({"type": "overheat", "severity": "major", "message": "92C"}).encode()
    r = await desk.device_alarm(hot, device="pump-7")
    assert r["action"] == "open" and r["ticket"]["priority"] == "high"
    conv = r["conversation"]
    assert (conv["channel"], conv["status"], conv["priority"]) == ("alarm", "queued", "high")
    r2 = await desk.device_alarm(json.dumps({"type": "overheat", "severity": "critical"}).encode(), device="pump-7")
    assert r2["action"] == "repeat" and r2["ticket"]["id"] == r["ticket"]["id"] and r2["ticket"]["repeats"] == 1
    assert r2["ticket"]["priority"] == "urgent" and (await desk.conversation(conv["id"]))["priority"] == "urgent"
    other = await desk.device_alarm(json.dumps({"type": "leak", "severity": "minor"}).encode(), device="pump-7")
    assert other["action"] == "open" and other["ticket"]["id"] != r["ticket"]["id"]
    ok = await desk.device_alarm(json.dumps({"type": "overheat", "state": "ok"}).encode(), device="pump-7")
    assert ok["action"] == "recover" and ok["ticket"]["status"] == "resolved"
    assert (await desk.conversation(conv["id"]))["status"] == "resolved"
    msgs, _ = await desk.messages(conv["id"])
    assert [m["text"] for m in msgs] == ["overheat on pump-7 (major): 92C", "Repeated (1): overheat on pump-7 (critical)",
                                         "Recovered: overheat on pump-7"]
    again = await desk.device_alarm(hot, device="pump-7")
    assert again["action"] == "open" and again["ticket"]["id"] not in (r["ticket"]["id"], other["ticket"]["id"])
    with pytest.raises(Invalid, match="not JSON"):
        await desk.device_alarm(b"\xff", device="pump-7")


async def test_hooks_filter_and_notify(nursery, autojump_clock, recorder):
    hooks = DeskHooks()
    seen = []

    def redact(p: MessageReceived):
        return MessageReceived(p.conv_id, "someone-else", p.channel, p.text.replace("4111111111111111", "[card]"), p.meta)

    async def vip_everything(p: RouteDecided):
        return RouteDecided(p.conv_id, p.facts, Route("plugin", "vip", 0, "human"))

    hooks.register("message_received", redact)
    hooks.register("route_decided", vip_everything)
    hooks.register("conversation_created", lambda p: seen.append(p.event.data["conversation"]["id"]))
    hooks.register("ticket_created", lambda p: 1 / 0)  # a broken plugin is logged, the desk carries on
    with pytest.raises(HookError, match="unknown desk hook"):
        hooks.register("on_mesage", print)
    from kefu.desk import Desk

    desk = Desk(small_settings(), classify=keyword_classifier, publish=recorder, hooks=hooks)
    await nursery.start(desk.run)
    r = await desk.customer_message("chat", "ann", "my card 4111111111111111 arrive?")
    assert r["message"]["text"] == "my card [card] arrive?" and r["conversation"]["customer"] == "ann"
    assert r["conversation"]["team"] == "vip" and r["conversation"]["handoff_reason"] == "rule:plugin"
    assert seen == [r["conversation"]["id"]]


async def test_ingest_maps_topics_and_answers_errors_on_the_senders_topic(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk, accept_timeout=0.0)
    await desk.ingest("kefu/agent/alice/ctl", b'{"type": "status", "status": "online"}')
    await desk.ingest("kefu/c/dev9/main/in", "human please".encode())
    await desk.turns_settled()  # the broker's intake leaves the bot's turn to the background
    cid = (await desk.open_conversation_of("dev9", "main"))["id"]
    assert (await desk.conversation(cid))["assignee"] == "alice"
    await desk.ingest(f"kefu/agent/alice/conv/{cid}", b"plain text reply")
    await desk.ingest(f"kefu/agent/alice/conv/{cid}", b'{"type": "message", "text": "a note", "private": true}')
    await desk.ingest("kefu/c/dev9/main/in", b'{"type": "typing", "on": true}')
    assert recorder.texts(OUT.format("dev9"))[-1] == "plain text reply"
    msgs, _ = await desk.messages(cid, include_private=True)
    assert msgs[-1]["private"] and msgs[-1]["text"] == "a note"
    await desk.ingest("kefu/c/dev9/main/in", b"{not json")
    err = recorder.on(EVENTS.format("dev9"))[-1]
    assert err["type"] == "error" and "not valid JSON" in err["message"]
    await desk.ingest(f"kefu/agent/bob/conv/{cid}", b"sneaky")  # the broker ACL stops this; the desk does too
    assert recorder.on(INBOX.format("bob"))[-1]["code"] == "forbidden"
    await desk.ingest("kefu/c/dev9/main/out", b"ignored: not a desk topic")


async def test_demo_config_lost_card_reaches_vip_while_normal_chats_wait(nursery, autojump_clock, recorder):
    from kefu.desk import Desk

    s = from_file(ROOT / "config" / "demo.toml")
    desk = Desk(s, classify=keyword_classifier, publish=recorder)
    await nursery.start(desk.run)
    for a in ("alice", "bob", "chen", "vera"):
        await desk.agent_connected(a)
    normal = [(await desk.customer_message("chat", f"n{i}", "I need a human"))["conversation"]["id"] for i in range(8)]
    for cid in normal:
        c = await desk.conversation(cid)
        if c["assignee"]:
            await desk.agent_action(c["assignee"], "accept", cid)
    t0 = trio.current_time()
    lost = (await desk.customer_message("chat", "victim", "my card was stolen"))["conversation"]
    assert lost["assignee"] == "vera" and lost["priority"] == "urgent" and trio.current_time() - t0 < 1
    waiting = await desk.conversations(filters={"status": "queued"})
    assert len(waiting) == 2 and all(w["team"] == "general" for w in waiting)
    faq = await desk.customer_message("chat", "q", "what is the exchange rate?")
    assert faq["conversation"]["status"] == "bot"
    assert "interbank rate" in recorder.texts(OUT.format("q"))[-1]


async def test_bad_input_is_refused_clearly(nursery, autojump_clock, make_desk):
    desk = await start(nursery, make_desk)
    with pytest.raises(ValueError, match="customer id"):
        await desk.customer_message("chat", "bad/id", "hi")
    with pytest.raises(Invalid, match="empty"):
        await desk.customer_message("chat", "ann", "   ")
    with pytest.raises(Invalid, match="longer than"):
        await desk.customer_message("chat", "ann", "x" * 5000)
    with pytest.raises(Invalid, match="unknown action"):
        await desk.agent_action("alice", "dance")
    with pytest.raises(Invalid, match="rating"):
        cid = (await desk.customer_message("chat", "ann", "human"))["conversation"]["id"]
        await desk.agent_action(None, "resolve", cid)
        await desk.customer_event("ann", "main", "csat", rating=9)


async def test_answers_variables_from_contact(nursery, autojump_clock, recorder):
    from kefu.desk import Desk

    s = small_settings(answers=Answers({}, {"card_arrival": Answer("Hi {contact.name|there}, plan {contact.plan|basic}.")}))
    desk = Desk(s, classify=keyword_classifier, publish=recorder)
    await nursery.start(desk.run)
    await desk.set_contact("ann", fields={"name": "Ann"}, attributes={"plan": "metal"})
    await desk.customer_message("chat", "ann", "card arrive?")
    assert recorder.texts(OUT.format("ann"))[-1] == "Hi Ann, plan metal."
