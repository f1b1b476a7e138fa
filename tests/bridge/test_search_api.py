"""GET /api/v1/search through the whole of kefu: messages written by the desk's transcript
path (kefu.record) into a real SQLite store, found in Chinese and English, filtered by
who is asking, with clear 400 and 503 answers."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import trio

from bridge_stack import AGENT_TOKENS, OPERATOR_TOKEN, app_config, kefu_app

ALICE, BOB = AGENT_TOKENS["alice"], AGENT_TOKENS["bob"]


def _get(url: str, token: str | None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"api_access_token": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def search(app, q: str, token: str | None = ALICE, **extra) -> tuple[int, dict]:
    qs = urllib.parse.urlencode({"q": q, **extra})
    return await trio.to_thread.run_sync(_get, f"{app.bridge.http_url}/api/v1/search?{qs}", token)


def marked(hit: dict) -> list[str]:
    return [p["text"] for p in hit["highlights"] if p["match"]]


async def test_chinese_and_english_transcripts_are_found_by_who_may_see_them(tmp_path):
    async with kefu_app(app_config(tmp_path / "kefu.db")) as app:
        d = app.desk
        await d.agent_connected("alice")
        zh = (await d.customer_message("chat", "wang", "你好，我想申请退款，订单12345还没有到", thread="web"))["conversation"]
        en = (await d.customer_message("chat", "ann", "Hi, I need a Refund for order 1234 please", thread="web"))["conversation"]
        assert zh["assignee"] == en["assignee"] == "alice" and zh["team"] == "general"
        await d.agent_action("alice", "reply", en["id"], text="The refund is on its way.")
        await d.agent_action("alice", "note", zh["id"], text="退款已批准")
        # nothing to wait for: every desk call above returned after its commit

        # Chinese: a two-character word (below a trigram, found by the store's scan) and a longer phrase.
        s, body = await search(app, "退款")
        assert s == 200, body
        hits = body["data"]["payload"]
        assert [h["conversation"] for h in hits] == [zh["id"], zh["id"]]  # newest first: the note, then the customer
        note, said = hits
        assert note["private"] is True and note["author"] == {"kind": "agent", "id": "alice", "name": "Alice"}
        assert said["author"]["kind"] == "customer" and said["author"]["id"] == "wang" and said["customer"] == "wang"
        assert marked(said) == ["退款"] and said["snippet"] == "你好，我想申请退款，订单12345还没有到"
        # The id is the messages API's id, so the console can find the line in the thread.
        s, msgs = await trio.to_thread.run_sync(
            _get, f"{app.bridge.http_url}/api/v1/conversations/{zh['id']}/messages", ALICE)
        ids = {m["id"]: m["text"] for m in msgs["data"]["payload"]}
        assert ids[said["id"]] == "你好，我想申请退款，订单12345还没有到" and ids[note["id"]] == "退款已批准"
        s, body = await search(app, "申请退款")
        assert [marked(h) for h in body["data"]["payload"]] == [["申请退款"]]

        # English: case-insensitive, every word must occur, each highlighted.
        s, body = await search(app, "REFUND", token=OPERATOR_TOKEN)
        assert s == 200 and body["data"]["meta"] == {"q": "REFUND", "count": 2, "scope": "all"}
        hits = body["data"]["payload"]
        assert [h["author"]["kind"] for h in hits] == ["agent", "customer"]
        assert [marked(h) for h in hits] == [["refund"], ["Refund"]]
        assert all(h["ts"] > 0 and h["conversation"] == en["id"] for h in hits)
        s, body = await search(app, "refund 1234")
        assert [h["snippet"] for h in body["data"]["payload"]] == ["Hi, I need a Refund for order 1234 please"]
        assert marked(body["data"]["payload"][0]) == ["Refund", "1234"]
        s, body = await search(app, "refund", limit=1)
        assert body["data"]["meta"]["count"] == 1

        # Bob works the vip team only: alice's general-team conversations are not his to read.
        s, body = await search(app, "refund", token=BOB)
        assert s == 200 and body["data"]["payload"] == [] and body["data"]["meta"]["scope"] == "agent"
        s, body = await search(app, "退款", token=BOB)
        assert body["data"]["payload"] == []

        # Bad input is named.
        s, body = await search(app, "退")
        assert s == 400 and body["error"] == "bad_request" and "2 or more characters" in body["message"]
        s, body = await search(app, "   ")
        assert s == 400
        s, body = await search(app, "refund", limit=500)
        assert s == 400 and "limit" in body["message"]
        s, body = await search(app, "refund", token=None)
        assert s == 401


async def test_search_switched_off_answers_503_naming_the_setting(tmp_path):
    async with kefu_app(app_config(tmp_path / "kefu.db", storage__search_index=False)) as app:
        await app.desk.customer_message("chat", "ann", "refund please", thread="web")
        s, body = await search(app, "refund")
        assert s == 503 and body["error"] == "search_unavailable"
        assert "storage.search_index" in body["message"]
