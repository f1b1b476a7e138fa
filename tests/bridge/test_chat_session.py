"""/chat end to end over real sockets: a visitor and an agent in one conversation, the
visitor's identity rules, and the abuse limits (error frames, 1008, 1009, idle close)."""

from __future__ import annotations


import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from bridge_stack import AGENT_TOKENS, SITE_SECRET, ChatClient, config, kefu_stack
from kefu.bridge.frames import validate_server_frame
from kefu.bridge.identity import sign_identity


async def visitor_ready(c: ChatClient, **auth) -> dict:
    await c.send({"type": "auth", "role": "visitor", "site": "demo", **auth})
    return await c.until(lambda f: f["type"] in ("ready", "error"))


async def agent_ready(c: ChatClient, agent="alice") -> dict:
    await c.send({"type": "auth", "role": "agent", "token": AGENT_TOKENS[agent]})
    return await c.until(lambda f: f["type"] in ("ready", "error"))


async def test_visitor_and_agent_talk_and_every_frame_obeys_its_schema():
    async with kefu_stack() as st:
        async with open_websocket_url(st.ws + "/chat") as a_conn, open_websocket_url(st.ws + "/chat") as v_conn:
            agent, visitor = ChatClient(a_conn), ChatClient(v_conn)
            assert (await agent_ready(agent))["id"] == "alice"
            ready = await visitor_ready(visitor)
            assert ready["type"] == "ready" and ready["id"].startswith("anon-") and ready["conversation"] is None

            await visitor.send({"type": "message", "text": "my thermostat shows E4", "ref": "m1"})
            ack = await visitor.until(lambda f: f["type"] == "ack")
            assert ack["ref"] == "m1" and ack["message"]["text"] == "my thermostat shows E4"
            conv = ack["conversation"]["id"]

            # The desk has no classifier here: it hands off, alice (online, free) gets the offer.
            got = await agent.until(lambda f: f["type"] == "message" and f["message"]["author"]["kind"] == "customer")
            assert got["message"]["text"] == "my thermostat shows E4" and got["message"]["conversation"] == conv
            await agent.until(lambda f: f["type"] == "conversation" and f["conversation"]["assignee"] == "alice")

            await agent.send({"type": "message", "conversation": conv, "text": "E4 means a loose sensor cable.", "ref": "r1"})
            ack = await agent.until(lambda f: f["type"] in ("ack", "error") and f.get("ref") == "r1")
            assert ack["type"] == "ack", ack
            reply = await visitor.until(lambda f: f["type"] == "message" and f["message"]["author"]["kind"] == "agent")
            assert reply["message"]["text"] == "E4 means a loose sensor cable."
            assert reply["message"]["author"]["name"] == "Alice"

            # A private note never reaches the visitor; typing does.
            await agent.send({"type": "message", "conversation": conv, "text": "customer sounds annoyed", "private": True, "ref": "n1"})
            await agent.until(lambda f: f.get("ref") == "n1")
            await agent.send({"type": "typing", "conversation": conv, "on": True})
            typing = await visitor.until(lambda f: f["type"] == "typing")
            assert typing["author"]["kind"] == "agent" and typing["on"] is True

            # Read receipt from the visitor reaches the agent.
            await visitor.send({"type": "read", "up_to": reply["message"]["id"], "ref": "rd"})
            await visitor.until(lambda f: f.get("ref") == "rd")
            seen = await agent.until(lambda f: f["type"] == "read")
            assert seen["up_to"] == reply["message"]["id"]

            # History, paged: everything the visitor may see, no private note.
            await visitor.send({"type": "history", "limit": 50, "ref": "h"})
            hist = await visitor.until(lambda f: f["type"] == "history")
            texts = [m["text"] for m in hist["messages"]]
            assert "my thermostat shows E4" in texts and "E4 means a loose sensor cable." in texts
            assert "customer sounds annoyed" not in texts
            assert all(not m["private"] for m in hist["messages"])

            await agent.send({"type": "action", "action": "resolve", "conversation": conv, "ref": "res"})
            ack = await agent.until(lambda f: f.get("ref") == "res")
            assert ack["type"] == "ack" and ack["conversation"]["status"] == "resolved"
            await visitor.until(lambda f: f["type"] == "conversation" and f["conversation"]["status"] == "resolved")

            # The visitor rates; the agent's console hears the rating (conversation.csat and rating/comment).
            await visitor.send({"type": "csat", "conversation": conv, "rating": 4, "comment": "Quick and kind", "ref": "cs"})
            ack = await visitor.until(lambda f: f.get("ref") == "cs")
            assert ack["type"] == "ack", ack
            rated = await agent.until(lambda f: f["type"] == "conversation" and f["conversation"].get("csat") is not None)
            assert rated["conversation"]["id"] == conv and rated["conversation"]["csat"] == 4
            assert rated["event"] == "updated" and rated["rating"] == 4 and rated["comment"] == "Quick and kind"

            for f in visitor.seen + agent.seen:
                validate_server_frame(f)
            assert not any(f["type"] == "message" and f["message"]["private"] for f in visitor.seen)


async def test_visitor_token_brings_back_the_same_visitor_and_a_forged_one_does_not():
    async with kefu_stack() as st:
        async with open_websocket_url(st.ws + "/chat") as conn:
            v = ChatClient(conn)
            first = await visitor_ready(v)
            await v.send({"type": "message", "text": "hello", "ref": "m"})
            conv = (await v.until(lambda f: f["type"] == "ack"))["conversation"]["id"]
        async with open_websocket_url(st.ws + "/chat") as conn:
            again = await visitor_ready(ChatClient(conn), visitor_token=first["visitor_token"])
            assert again["id"] == first["id"] and again["conversation"]["id"] == conv
        forged = first["visitor_token"][:-4] + "0000"
        async with open_websocket_url(st.ws + "/chat") as conn:
            other = await visitor_ready(ChatClient(conn), visitor_token=forged)
            assert other["id"] != first["id"] and other["conversation"] is None


async def test_signed_identity_is_checked():
    async with kefu_stack() as st:
        good = {"id": "user-42", "hash": sign_identity(SITE_SECRET, "user-42"), "name": "Ann"}
        async with open_websocket_url(st.ws + "/chat") as conn:
            c = ChatClient(conn)
            await c.send({"type": "auth", "role": "visitor", "site": "pk_shop", "identity": good})
            r = await c.until(lambda f: f["type"] in ("ready", "error"))
            assert r["type"] == "ready" and r["id"] == "user-42" and r["name"] == "Ann"
        bad = {**good, "hash": sign_identity("wrong", "user-42")}
        async with open_websocket_url(st.ws + "/chat") as conn:
            c = ChatClient(conn)
            await c.send({"type": "auth", "role": "visitor", "site": "pk_shop", "identity": bad})
            err = await c.recv()
            assert err["type"] == "error" and err["code"] == "auth_failed" and "hash" in err["message"]
            with pytest.raises(ConnectionClosed) as e:
                await c.recv()
            assert e.value.reason.code == 1008
        async with open_websocket_url(st.ws + "/chat") as conn:
            c = ChatClient(conn)
            await c.send({"type": "auth", "role": "agent", "token": "not-a-real-token"})
            assert (await c.recv())["code"] == "auth_failed"


async def test_bad_frames_get_errors_then_1008():
    async with kefu_stack(config(chat__max_errors=4)) as st:
        async with open_websocket_url(st.ws + "/chat") as conn:
            c = ChatClient(conn)
            await c.send({"type": "message", "text": "before auth"})
            assert (await c.recv())["code"] == "auth_required"
            await visitor_ready(c)
            await c.send("{not json")
            assert (await c.recv())["code"] == "bad_json"
            await c.send({"type": "message", "ref": "x"})
            e = await c.recv()
            assert (e["code"], e["field"], e["ref"]) == ("missing_field", "text", "x")
            await c.send({"type": "dance"})
            assert (await c.recv())["code"] == "unknown_type"
            # Good frames still work between bad ones.
            await c.send({"type": "ping", "ref": "p"})
            assert (await c.recv()) == {"type": "pong", "ref": "p"}
            await c.send({"type": "action", "action": "resolve", "conversation": "cv-1"})
            assert (await c.recv())["code"] == "forbidden"  # the 5th refusal: over max_errors = 4
            with pytest.raises(ConnectionClosed) as ex:
                await c.recv()
            assert ex.value.reason.code == 1008


async def test_oversized_frames_error_then_1009():
    cfg = config(chat__max_frame_bytes=1000, chat__close_frame_bytes=5000, chat__max_text_chars=100)
    async with kefu_stack(cfg) as st:
        async with open_websocket_url(st.ws + "/chat") as conn:
            c = ChatClient(conn)
            await visitor_ready(c)
            await c.send({"type": "message", "text": "x" * 2000})
            e = await c.recv()
            assert e["code"] == "too_large" and "1000 bytes" in e["message"]
            await c.send({"type": "message", "text": "y" * 200, "ref": "t"})
            e = await c.recv()
            assert e["code"] == "too_large" and e["field"] == "text" and "100" in e["message"]
            await c.send({"type": "message", "text": "z" * 6000})
            with pytest.raises(ConnectionClosed) as ex:
                await c.recv()
            assert ex.value.reason.code == 1009


async def test_rate_limit_answers_rate_limited(autojump_clock):
    # Burst 5 at 1 frame/s: the 6th immediate frame is refused, and after a pause it flows again.
    cfg = config(chat__rate_per_second=1.0, chat__rate_burst=5, chat__max_errors=50)
    async with kefu_stack(cfg) as st:
        async with open_websocket_url(st.ws + "/chat") as conn:
            c = ChatClient(conn)
            await visitor_ready(c)  # the auth frame took one token
            codes = []
            for i in range(6):
                await c.send({"type": "ping", "ref": f"p{i}"})
                f = await c.recv()
                codes.append(f["type"] if f["type"] == "pong" else f["code"])
            assert codes == ["pong"] * 4 + ["rate_limited"] * 2
            await trio.sleep(3)
            await c.send({"type": "ping", "ref": "later"})
            assert (await c.recv())["type"] == "pong"


async def test_idle_and_unauthenticated_connections_are_closed(autojump_clock):
    async with kefu_stack(config(chat__idle_timeout=30.0, chat__auth_timeout=5.0)) as st:
        async with open_websocket_url(st.ws + "/chat") as conn:
            with pytest.raises(ConnectionClosed) as ex:
                await conn.get_message()
            assert ex.value.reason.code == 1000 and "authentication" in ex.value.reason.reason
        async with open_websocket_url(st.ws + "/chat") as conn:
            c = ChatClient(conn)
            await visitor_ready(c)
            with pytest.raises(ConnectionClosed) as ex:
                while True:
                    await c.recv()
            assert ex.value.reason.code == 1000 and "idle" in ex.value.reason.reason
