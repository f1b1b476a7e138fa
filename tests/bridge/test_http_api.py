"""The HTTP side over a real socket: every route is in the OpenAPI document and every
documented operation answers with the documented shape; auth; health; pages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import trio
from jsonschema import Draft202012Validator
from starlette.routing import Route

from bridge_stack import AGENT_TOKENS, OPERATOR_TOKEN, kefu_stack
from kefu.bridge import http as httpmod

ALICE = AGENT_TOKENS["alice"]


def _call(method: str, url: str, token: str | None, body) -> tuple[int, dict | None, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("api_access_token", token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    ctype = headers.get("content-type", "")
    return status, (json.loads(raw) if raw and "json" in ctype else None), {"raw": raw, **headers}


async def call(method, url, token=None, body=None):
    return await trio.to_thread.run_sync(_call, method, url, token, body)


def test_every_app_route_is_documented_and_every_documented_route_exists():
    doc = httpmod.openapi_document()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app = httpmod.build_app(httpmod.BridgeState(cfg=None, desk=None, ids=None))
    served = set()
    for r in app.routes:
        if isinstance(r, Route) and r.path.startswith("/api/v1/") and r.path != "/api/v1/openapi.json":
            for m in r.methods - {"HEAD"}:
                served.add((m, r.path))
    assert served == documented
    Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})


class Checker:
    """Validates responses against the document and records which operations ran."""

    def __init__(self, base: str, doc: dict) -> None:
        self.base, self.doc, self.done = base, doc, set()

    def _validator(self, schema: dict) -> Draft202012Validator:
        full = {**schema, "components": self.doc["components"]}
        return Draft202012Validator(full)

    async def __call__(self, method: str, path: str, template: str, token=ALICE, body=None, expect=None) -> dict | None:
        status, payload, _ = await call(method, self.base + path, token, body)
        op = self.doc["paths"][template][method.lower()]
        want = expect or int(next(k for k in op["responses"] if k != "default"))
        assert status == want, (method, path, status, payload)
        resp = op["responses"].get(str(status)) or op["responses"]["default"]
        if "content" in resp:
            self._validator(resp["content"]["application/json"]["schema"]).validate(payload)
        self.done.add((method, template))
        return payload


async def test_every_operation_answers_as_documented():
    async with kefu_stack() as st:
        base = st.http
        status, doc, _ = await call("GET", base + "/api/v1/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.1")
        api = Checker(base, doc)
        # Real traffic first: a device-like customer writes; alice goes online and gets it.
        await st.desk.agent_connected("alice")
        res = await st.desk.customer_message("mqtt", "dev-7", "the fan is noisy", thread="main")
        conv = res["conversation"]["id"]
        await st.desk.customer_message("chat", "ann", "hello?", thread="web")

        p = await api("GET", "/api/v1/profile", "/api/v1/profile")
        assert p["data"]["agent"]["id"] == "alice" and p["data"]["ws_url"].startswith("ws://")
        lang = await api("PUT", "/api/v1/profile/language", "/api/v1/profile/language", body={"language": "zh-CN"})
        assert lang["data"]["language"] == "zh-CN"
        assert (await api("GET", "/api/v1/profile", "/api/v1/profile"))["data"]["agent"]["language"] == "zh-CN"
        await api("PUT", "/api/v1/profile/language", "/api/v1/profile/language", body={"language": "fr"}, expect=422)
        lst = await api("GET", "/api/v1/conversations?assignee=me&status=open", "/api/v1/conversations")
        assert conv in [c["id"] for c in lst["data"]["payload"]]
        assert lst["data"]["meta"]["mine_count"] >= 1
        await api("GET", f"/api/v1/conversations/{conv}", "/api/v1/conversations/{id}")
        await api("POST", f"/api/v1/conversations/{conv}/accept", "/api/v1/conversations/{id}/accept")
        m = await api("POST", f"/api/v1/conversations/{conv}/messages", "/api/v1/conversations/{id}/messages",
                      body={"content": "Please check the fan filter."})
        assert m["data"]["author"]["id"] == "alice"
        await api("POST", f"/api/v1/conversations/{conv}/messages", "/api/v1/conversations/{id}/messages",
                  body={"content": "note to self", "private": True})
        msgs = await api("GET", f"/api/v1/conversations/{conv}/messages?limit=2", "/api/v1/conversations/{id}/messages")
        assert [x["text"] for x in msgs["data"]["payload"]][-1] == "note to self" and msgs["data"]["meta"]["more"]
        lab = await api("POST", f"/api/v1/conversations/{conv}/labels", "/api/v1/conversations/{id}/labels",
                        body={"labels": ["device"]})
        assert lab["data"]["labels"] == ["device"]
        await api("POST", f"/api/v1/conversations/{conv}/toggle_status", "/api/v1/conversations/{id}/toggle_status",
                  body={"status": "resolved"})
        r = await api("POST", f"/api/v1/conversations/{conv}/toggle_status", "/api/v1/conversations/{id}/toggle_status",
                      body={"status": "open"})
        assert r["data"]["status"] in ("queued", "assigned")
        await st.desk.agent_connected("bob")
        moved = await api("POST", f"/api/v1/conversations/{conv}/assignments", "/api/v1/conversations/{id}/assignments",
                          token=OPERATOR_TOKEN, body={"assignee_id": "bob"})
        assert moved["data"]["assignee"] == "bob"
        await api("GET", "/api/v1/agents", "/api/v1/agents")
        a = await api("PUT", "/api/v1/agents/alice/status", "/api/v1/agents/{id}/status", body={"status": "away"})
        assert a["data"]["status"] == "away"
        await api("PUT", "/api/v1/agents/bob/status", "/api/v1/agents/{id}/status", body={"status": "away"}, expect=403)
        await api("GET", "/api/v1/contacts?q=dev", "/api/v1/contacts")
        await api("GET", "/api/v1/contacts/dev-7", "/api/v1/contacts/{id}")
        cc = await api("GET", "/api/v1/contacts/dev-7/conversations", "/api/v1/contacts/{id}/conversations")
        assert [c["id"] for c in cc["data"]["payload"]] == [conv]
        t = await api("GET", "/api/v1/tickets", "/api/v1/tickets")
        if t["data"]["payload"]:
            await api("GET", f"/api/v1/tickets/{t['data']['payload'][0]['id']}", "/api/v1/tickets/{id}")
        canned = await api("GET", "/api/v1/canned_responses", "/api/v1/canned_responses")
        assert {"code": "hello", "text": "Hello! How can I help?"} in canned["data"]["payload"]
        await api("GET", "/api/v1/labels", "/api/v1/labels")
        await api("GET", "/api/v1/webhooks", "/api/v1/webhooks", expect=403)  # operators only
        wh = await api("POST", "/api/v1/webhooks", "/api/v1/webhooks", token=OPERATOR_TOKEN,
                       body={"url": "https://crm.example/hook", "subscriptions": ["conversation_created"]})
        assert wh["data"]["secret"]
        hooks = await api("GET", "/api/v1/webhooks", "/api/v1/webhooks", token=OPERATOR_TOKEN)
        assert [h["url"] for h in hooks["data"]["payload"]] == ["https://crm.example/hook"]
        await api("DELETE", f"/api/v1/webhooks/{wh['data']['id']}", "/api/v1/webhooks/{id}", token=OPERATOR_TOKEN)
        # This stack has no SQL store: search says so (tests/bridge/test_search_api.py searches a real one).
        no = await api("GET", "/api/v1/search?q=fan", "/api/v1/search", expect=503)
        assert no["error"] == "search_unavailable" and "[storage]" in no["message"]
        w = await api("GET", "/api/v1/widget/config?website_token=demo", "/api/v1/widget/config", token=None)
        assert w["data"]["ws_url"] == st.ws
        await api("GET", "/api/v1/widget/config?website_token=nope", "/api/v1/widget/config", token=None, expect=404)

        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        ticketless = set() if t["data"]["payload"] else {("GET", "/api/v1/tickets/{id}")}
        assert documented - api.done == ticketless


async def test_auth_errors_and_bad_input_are_clear():
    async with kefu_stack() as st:
        b = st.http + "/api/v1"
        s, body, _ = await call("GET", b + "/conversations")
        assert s == 401 and body["error"] == "unauthorized"
        s, body, _ = await call("GET", b + "/conversations", "wrong-token")
        assert s == 401
        # Bearer works as well as api_access_token.
        req = urllib.request.Request(b + "/profile", headers={"Authorization": f"Bearer {ALICE}"})
        r = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(req, timeout=5))
        assert r.status == 200
        s, body, _ = await call("GET", b + "/conversations/cv-999", ALICE)
        assert s == 404 and "cv-999" in body["message"]
        s, body, _ = await call("POST", b + "/webhooks", OPERATOR_TOKEN, {"subscriptions": []})
        assert s == 422 and body["message"] == "missing field url"
        s, body, _ = await call("GET", b + "/conversations?status=weird", ALICE)
        assert s == 422 and "status" in body["message"]


async def test_health_and_pages():
    async with kefu_stack() as st:
        s, body, _ = await call("GET", st.http + "/healthz")
        assert s == 200 and body["status"] == "ok"
        s, body, _ = await call("GET", st.http + "/readyz")
        assert s == 200 and body["checks"] == {"ws": True, "desk": True}
        for path, needle, ctype in [
            ("/", b'href="/console" data-i18n="index.console"', "text/html"),
            ("/i18n?lang=zh-Hans,en", '"language":"zh-CN"'.encode(), "application/json"),
            ("/i18n?lang=fr", '"widget.send":"Send"'.encode(), "application/json"),
            ("/demo", b'src="/widget.js" data-site="demo"', "text/html"),
            ("/console", b"console.js", "text/html"),
            ("/widget.js", b"attachShadow", "javascript"),
            ("/static/console.js", b"api_access_token", "javascript"),
            ("/static/vendor/mqtt.min.js", b"mqtt", "javascript"),
            ("/favicon.ico", b"\x00\x00\x01\x00", "image/x-icon"),  # an ICO header: no 404 on any page
        ]:
            s, _, h = await call("GET", st.http + path)
            assert s == 200, path
            assert needle in h["raw"], path
            assert ctype in h.get("content-type", ""), (path, h.get("content-type"))
            if ctype == "text/html":
                assert b'<link rel="icon" href="/favicon.ico">' in h["raw"], path
