"""Issue 12, item 4: an agent reads only the conversations of its teams, on every read path.

config/demo.toml: Alice works ``general``, Vera ``vip``. A customer's conversation is
moved to ``vip`` with a private note; Alice must not get it from the REST list, the REST
conversation and messages, a contact's conversations, a /chat ``history`` frame, nor the
live /chat stream -- while Vera, and an operator, do.
"""

from __future__ import annotations

import json

import pytest

from secstack import OPERATOR, TOKENS, SecStack, recv_until, sec_config, signed


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with SecStack(sec_config(tmp_path_factory.mktemp("vis"))) as s:
        yield s


def customer_says(stack, who: str, text: str) -> str:
    ws, _ = stack.visitor(**signed(who))
    ws.send(json.dumps({"type": "message", "text": text, "ref": "m"}))
    conv = recv_until(ws, lambda f: f.get("ref") == "m")["conversation"]["id"]
    ws.close()
    return conv


def test_every_read_path_follows_one_rule(stack):
    vera = stack.agent("vera")
    vip = customer_says(stack, "vip-customer", "my card was stolen")
    desk = stack.app.desk
    stack.acall(lambda: desk.agent_action(None, "assign", vip, agent="vera"))  # waiting in general: take it out
    stack.acall(lambda: desk.agent_action(None, "transfer", vip, team="vip"))
    assert stack.acall(lambda: desk.conversation(vip))["team"] == "vip"
    stack.acall(lambda: desk.agent_action(None, "note", vip, text="VIP: card blocked, PIN reset pending"))
    alice = stack.agent("alice")  # signs in once the conversation is Vera's team's
    general = customer_says(stack, "plain-customer", "hello")  # routed to general (demo default)

    # REST, as Alice: 404 for the VIP conversation, not in lists
    a = TOKENS["alice"]
    assert stack.get(f"/api/v1/conversations/{vip}/messages", a).status_code == 404
    assert stack.get(f"/api/v1/conversations/{vip}", a).status_code == 404
    listed = {c["id"] for c in stack.get("/api/v1/conversations?status=open", a).json()["data"]["payload"]}
    assert general in listed and vip not in listed
    assert stack.get("/api/v1/contacts/vip-customer/conversations", a).json()["data"]["payload"] == []
    # ... as Vera and as an operator: there, with the note
    for tok in (TOKENS["vera"], TOKENS["chen"], OPERATOR):  # chen: supervisor = true
        r = stack.get(f"/api/v1/conversations/{vip}/messages", tok)
        assert r.status_code == 200 and any("PIN reset" in m["text"] for m in r.json()["data"]["payload"])

    # /chat history
    seen: list[dict] = []  # every frame Alice's console receives from here on (it is buffered since sign-in)

    def alice_until(pred):
        return recv_until(alice, lambda f: seen.append(f) or pred(f))

    alice.send(json.dumps({"type": "history", "conversation": vip, "ref": "h1"}))
    err = alice_until(lambda f: f.get("ref") == "h1")
    assert err["type"] == "error" and err["code"] == "not_found"
    vera.send(json.dumps({"type": "history", "conversation": vip, "ref": "h2"}))
    hist = recv_until(vera, lambda f: f.get("ref") == "h2")
    assert hist["type"] == "history" and any("PIN reset" in m["text"] for m in hist["messages"])

    # the live stream: the next VIP note reaches Vera, not Alice; Alice's stream goes on
    stack.acall(lambda: desk.agent_action(None, "note", vip, text="VIP second note"))
    recv_until(vera, lambda f: f.get("type") == "message" and f["message"]["text"] == "VIP second note")
    stack.acall(lambda: desk.agent_action(None, "note", general, text="general note"))
    alice_until(lambda f: f.get("type") == "message" and f["message"]["text"] == "general note")
    leaked = [f for f in seen if f.get("ref") != "h1" and vip in json.dumps(f)]
    assert any(f.get("type") == "message" for f in seen)
    assert leaked == [], leaked
    alice.close()
    vera.close()
    stack.alive()
