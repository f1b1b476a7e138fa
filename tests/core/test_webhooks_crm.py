"""Webhooks and the CRM lookup against a real local HTTP server (port 0, real sockets).

These use trio's real clock with short backoffs: autojump_clock would jump past
socket waits between this process's own client and server.
"""

from __future__ import annotations

import json
import time

import pytest
import trio

from kefu.contacts import Contact, CrmSettings, HttpCrm, load_crm
from kefu.desk import Desk
from kefu.events import CONVERSATION_CREATED, MESSAGE_CREATED, SLA_BREACHED, Event
from kefu.httpc import HttpError
from kefu.routing import Route, Router, Rule
from kefu.webhooks import Dispatcher, Endpoint, Policy, sign, verify

from .conftest import keyword_classifier, small_settings
from .httpserver import Request, TestServer

SECRET = "s3cret"


async def ok(req: Request):
    return 200, b"{}"


async def test_signed_delivery_verifies_and_carries_the_event(nursery):
    server = await nursery.start(TestServer(ok).serve)
    d = Dispatcher([Endpoint("main", server.url("/hook"), SECRET)])
    await nursery.start(d.run)
    d.submit(Event(CONVERSATION_CREATED, {"conversation": {"id": "cv-1"}}, 12.5))
    (req,) = await server.wait_requests(1)
    assert req.method == "POST" and req.target == "/hook"
    h = req.headers
    assert h["x-kefu-event"] == "conversation_created" and h["content-type"] == "application/json"
    assert verify(SECRET, h["x-kefu-timestamp"], req.body, h["x-kefu-signature"], now=time.time())
    assert not verify("wrong", h["x-kefu-timestamp"], req.body, h["x-kefu-signature"], now=time.time())
    assert not verify(SECRET, h["x-kefu-timestamp"], req.body + b" ", h["x-kefu-signature"], now=time.time())
    assert not verify(SECRET, h["x-kefu-timestamp"], req.body, h["x-kefu-signature"], now=time.time() + 3600)
    doc = json.loads(req.body)
    assert doc == {"id": h["x-kefu-delivery"], "event": "conversation_created", "at": 12.5,
                   "data": {"conversation": {"id": "cv-1"}}}
    # the signature is what a receiver computes by hand
    assert h["x-kefu-signature"] == sign(SECRET, int(h["x-kefu-timestamp"]), req.body)


async def test_retries_with_backoff_then_succeeds_same_delivery_id(nursery):
    answers = [503, 500, 200]

    async def flaky(req):
        return answers.pop(0), b""

    server = await nursery.start(TestServer(flaky).serve)
    d = Dispatcher([Endpoint("e", server.url("/"), SECRET)], Policy(backoff=0.05, max_attempts=5))
    await nursery.start(d.run)
    t0 = trio.current_time()
    d.submit(Event(MESSAGE_CREATED, {"n": 1}, 0))
    reqs = await server.wait_requests(3)
    assert trio.current_time() - t0 >= 0.05 + 0.1  # waited 0.05 then 0.1
    assert len({r.headers["x-kefu-delivery"] for r in reqs}) == 1
    with trio.fail_after(5):
        while d.stats("e").delivered < 1:
            await trio.sleep(0.01)
    assert (d.stats("e").retries, d.stats("e").failed) == (2, 0)


async def test_final_4xx_is_not_retried_and_events_filter(nursery):
    async def reject(req):
        return 400, b""

    server = await nursery.start(TestServer(reject).serve)
    d = Dispatcher([Endpoint("e", server.url("/"), SECRET, frozenset({SLA_BREACHED}))], Policy(backoff=0.01))
    await nursery.start(d.run)
    d.submit(Event(MESSAGE_CREATED, {}, 0))  # not subscribed
    d.submit(Event(SLA_BREACHED, {}, 0))
    await server.wait_requests(1)
    with trio.fail_after(5):
        while d.stats("e").failed < 1:
            await trio.sleep(0.01)
    await trio.sleep(0.1)
    assert len(server.requests) == 1 and server.requests[0].headers["x-kefu-event"] == "sla_breached"


async def test_a_hanging_receiver_never_blocks_and_the_queue_is_bounded(nursery):
    release = trio.Event()

    async def hang(req):
        await release.wait()
        return 200, b""

    server = await nursery.start(TestServer(hang).serve)
    d = Dispatcher([Endpoint("e", server.url("/"), SECRET)], Policy(queue_size=3, timeout=30))
    await nursery.start(d.run)
    d.submit(Event(MESSAGE_CREATED, {"i": 0}, 0))
    await server.wait_requests(1)  # event 0 is in flight and its receiver hangs
    t0 = time.perf_counter()
    for i in range(1, 50):
        d.submit(Event(MESSAGE_CREATED, {"i": i}, 0))
    assert time.perf_counter() - t0 < 0.05  # submit only enqueues
    assert d.stats("e").dropped == 49 - 3  # three kept, the rest dropped oldest-first
    release.set()
    reqs = await server.wait_requests(4)
    assert [json.loads(r.body)["data"]["i"] for r in reqs] == [0, 47, 48, 49]


async def test_desk_events_reach_webhooks_while_the_desk_keeps_going(nursery, recorder):
    server = await nursery.start(TestServer(ok).serve)
    s = small_settings(webhooks=(Endpoint("ops", server.url("/kefu"), SECRET),))
    desk = Desk(s, classify=keyword_classifier, publish=recorder)
    await nursery.start(desk.run)
    await desk.customer_message("chat", "ann", "I want a human")
    reqs = await server.wait_requests(4)
    kinds = [r.headers["x-kefu-event"] for r in reqs]
    assert kinds[:2] == ["conversation_created", "message_created"]
    assert "conversation_status_changed" in kinds and "ticket_created" in kinds
    for r in reqs:
        assert verify(SECRET, r.headers["x-kefu-timestamp"], r.body, r.headers["x-kefu-signature"], now=time.time())


def test_endpoint_validation():
    with pytest.raises(ValueError, match="secret is required"):
        Endpoint("x", "http://h/", "")
    with pytest.raises(ValueError, match="unknown event"):
        Endpoint("x", "http://h/", "s", frozenset({"nope"}))
    with pytest.raises(HttpError, match="http"):
        Endpoint("x", "ftp://h/", "s")


# --- CRM -----------------------------------------------------------------------------------


async def test_http_crm_caches_and_feeds_routing_and_the_sidebar(nursery, recorder):
    async def crm(req: Request):
        if "/customers/vip-1" in req.target:
            return 200, json.dumps({"tier": "vip", "name": "Dora", "plan": "Metal"}).encode()
        return 404, b""

    server = await nursery.start(TestServer(crm).serve)
    s = small_settings(crm=CrmSettings(provider="http", url=server.url("/customers/{customer_id}"), timeout=2))
    s = s.__class__(**{**s.__dict__, "router": Router(
        [Rule("vip-unhappy", "vip", 1, "human", sentiment=("negative",), tier=("vip",))],
        Route("(default)", "general", 2, "bot"))})
    desk = Desk(s, classify=keyword_classifier, publish=recorder)
    await nursery.start(desk.run)
    assert isinstance(desk.crm, HttpCrm)
    r = await desk.customer_message("chat", "vip-1", "this is terrible")
    assert (r["conversation"]["team"], r["conversation"]["handoff_reason"]) == ("vip", "rule:vip-unhappy")
    contact = await desk.contact("vip-1")
    assert contact["tier"] == "vip" and contact["sidebar"]["crm"] == {"data": {"tier": "vip", "name": "Dora", "plan": "Metal"}}
    r2 = await desk.customer_message("chat", "nobody", "this is terrible")
    assert r2["conversation"]["team"] == "general"  # a miss: no tier, default row
    assert (await desk.contact("nobody"))["sidebar"]["crm"] == {"data": None}
    # cached: another conversation of vip-1 does not call the CRM again
    await desk.customer_message("chat", "vip-1", "hello", thread="other")
    assert desk.crm.calls == 2 and len(server.requests) == 2


async def test_slow_or_broken_crm_shows_an_error_and_does_not_stop_the_chat(nursery, recorder):
    async def slow(req):
        await trio.sleep(10)
        return 200, b"{}"

    server = await nursery.start(TestServer(slow).serve)
    s = small_settings(crm=CrmSettings(provider="http", url=server.url("/c/{customer_id}"), timeout=0.2))
    desk = Desk(s, classify=keyword_classifier, publish=recorder)
    await nursery.start(desk.run)
    t0 = trio.current_time()
    r = await desk.customer_message("chat", "ann", "when will my card arrive")
    assert trio.current_time() - t0 < 2
    assert r["conversation"]["status"] == "bot"
    assert "0.2 s" in (await desk.contact("ann"))["sidebar"]["crm"]["error"]
    crm = HttpCrm(CrmSettings(provider="http", url="http://127.0.0.1:1/x/{customer_id}", timeout=1))
    with pytest.raises(HttpError):
        await crm.lookup(Contact("x"))


def test_crm_plugin_lookup_errors():
    assert load_crm(CrmSettings()) is None
    with pytest.raises(ValueError, match="no CRM plugin 'nope'; installed: .*http"):
        load_crm(CrmSettings(provider="nope"))
    with pytest.raises(ValueError, match="crm.url: required"):
        load_crm(CrmSettings(provider="http"))
