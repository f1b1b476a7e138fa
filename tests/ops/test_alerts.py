"""Threshold alerts: the pending/firing/resolved machine, and delivery as signed webhooks to a real
HTTP server on port 0 (retries included); then the whole path from a queued conversation."""

from __future__ import annotations

import json
import time

import pytest
import trio
import trio.testing
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kefu.alerts import Alerts, rule_problems
from kefu.config.model import AlertRule
from kefu.webhooks import verify
from ops_stack import config, ops_stack

SECRET = "alert-secret"


class Receiver:
    """An HTTP server that records each POST and answers with the next scripted status."""

    def __init__(self, statuses=()) -> None:
        self.statuses = list(statuses)
        self.send, self.recv = trio.open_memory_channel(100)
        self.url = ""

    async def _hook(self, req: Request) -> Response:
        body = await req.body()
        status = self.statuses.pop(0) if self.statuses else 200
        await self.send.send((dict(req.headers), body, status))
        return Response(status_code=status)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        hc = HyperConfig()
        hc.bind = ["127.0.0.1:0"]
        hc.accesslog = None
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])

        async def _serve(task_status):
            await serve(app, hc, shutdown_trigger=trio.sleep_forever, task_status=task_status)

        async with trio.open_nursery() as n:
            binds = await n.start(_serve)
            self.url = binds[0] + "/hook"
            task_status.started(self)

    async def next(self, timeout: float = 10.0):
        with trio.fail_after(timeout):
            headers, body, status = await self.recv.receive()
        assert verify(SECRET, headers["x-kefu-timestamp"], body, headers["x-kefu-signature"], now=time.time())
        return headers, json.loads(body), status


def rule(url, **kw):
    base = dict(metric="queue_wait_seconds", op=">", value=60.0, for_seconds=60.0, webhook=url, secret=SECRET)
    base.update(kw)
    return AlertRule(**base)


def test_rule_problems_name_the_key_path():
    probs = rule_problems([AlertRule(metric="queue_wait", webhook="", secret=""),
                           AlertRule(metric="csat_avg", webhook="ftp://x", secret="s")])
    assert probs[0].startswith("alerts[0].metric: unknown series 'queue_wait'; the stored series are:")
    assert "alerts[0].webhook: required" in probs[1] and "alerts[0].secret: required" in probs[2]
    assert probs[3].startswith("alerts[1].webhook:") and "http://" in probs[3]
    with pytest.raises(ValueError, match="alerts\\[0\\].metric"):
        Alerts([AlertRule(metric="nope", webhook="http://127.0.0.1/", secret="s")])


async def test_fires_after_holding_for_its_duration_then_resolves():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver().run)
        alerts = Alerts([rule(rx.url, labels={"team": "vip"}, name="VIP queue slow")])
        await n.start(alerts.run)
        vip, gen = "team=vip", "team=general"
        alerts.observe(1000.0, {"queue_wait_seconds": {vip: 70.0, gen: 500.0}})  # general is not watched
        alerts.observe(1030.0, {"queue_wait_seconds": {vip: 80.0}})
        assert alerts.firing() == []  # pending: not yet held for 60 s
        alerts.observe(1060.0, {"queue_wait_seconds": {vip: 95.0}})
        headers, body, _ = await rx.next()
        assert headers["x-kefu-event"] == "alert_firing"
        d = body["data"]
        assert (d["alert"], d["state"], d["metric"], d["labels"], d["value"], d["threshold"], d["since"]) == (
            "VIP queue slow", "firing", "queue_wait_seconds", {"team": "vip"}, 95.0, 60.0, 1060.0)
        assert [a["alert"] for a in alerts.firing()] == ["VIP queue slow"]
        alerts.observe(1070.0, {"queue_wait_seconds": {vip: 99.0}})  # still firing: no repeat configured
        alerts.observe(1080.0, {"queue_wait_seconds": {}})  # the queue emptied: the label set is gone
        headers, body, _ = await rx.next()
        assert headers["x-kefu-event"] == "alert_resolved" and body["data"]["state"] == "resolved"
        await trio.testing.wait_all_tasks_blocked()  # the sender has read the answer
        assert alerts.firing() == [] and alerts.stats.sent == 2
        n.cancel_scope.cancel()


async def test_a_dip_restarts_the_pending_time_and_repeat_resends():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver().run)
        alerts = Alerts([rule(rx.url, metric="csat_avg", op="<", value=3.0, for_seconds=20.0, repeat_seconds=30.0)])
        await n.start(alerts.run)
        for t, v in ((0, 2.0), (10, 4.0), (20, 2.5), (30, 2.0)):  # the dip at t=10 resets the clock
            alerts.observe(float(t), {"csat_avg": {"": v}})
        assert alerts.firing() == []
        alerts.observe(40.0, {"csat_avg": {"": 2.0}})
        assert (await rx.next())[1]["data"]["since"] == 40.0
        alerts.observe(60.0, {"csat_avg": {"": 2.0}})
        alerts.observe(70.0, {"csat_avg": {"": 1.5}})  # 30 s after the first send: sent again
        _, body, _ = await rx.next()
        assert body["event"] == "alert_firing" and body["data"]["value"] == 1.5
        n.cancel_scope.cancel()


async def test_delivery_retries_on_server_errors_and_keeps_the_delivery_id():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver([503, 500, 200]).run)
        alerts = Alerts([rule(rx.url, for_seconds=0)], backoff=0.01)
        await n.start(alerts.run)
        alerts.observe(5.0, {"queue_wait_seconds": {"team=general": 61.0}})
        ids = []
        for want in (503, 500, 200):
            headers, _, status = await rx.next()
            assert status == want
            ids.append(headers["x-kefu-delivery"])
        await trio.testing.wait_all_tasks_blocked()
        assert len(set(ids)) == 1 and alerts.stats.retries == 2 and alerts.stats.sent == 1
        n.cancel_scope.cancel()


async def test_a_rejecting_receiver_is_not_retried():
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver([400]).run)
        alerts = Alerts([rule(rx.url, for_seconds=0)], backoff=0.01)
        await n.start(alerts.run)
        alerts.observe(5.0, {"queue_wait_seconds": {"team=general": 61.0}})
        assert (await rx.next())[2] == 400
        alerts.observe(6.0, {"queue_wait_seconds": {}})  # resolved: the next delivery shows the 400 was final
        headers, _, _ = await rx.next()
        assert headers["x-kefu-event"] == "alert_resolved" and alerts.stats.failed == 1
        n.cancel_scope.cancel()


async def test_a_conversation_waiting_with_no_agent_fires_the_configured_alert(tmp_path):
    async with trio.open_nursery() as n:
        rx = await n.start(Receiver().run)
        cfg = config(tmp_path, alerts=[{"name": "anyone waiting", "metric": "queue_length", "op": ">", "value": 0,
                                        "for_seconds": 0, "labels": {"team": "general"}, "webhook": rx.url,
                                        "secret": SECRET}])
        async with ops_stack(cfg) as st:
            await st.desk.customer_message("mqtt", "cust-1", "my router is broken")  # no agent online: waits
            await st.ops.sampler.sample_once()
            _, body, _ = await rx.next()
            assert body["data"]["alert"] == "anyone waiting" and body["data"]["value"] == 1.0
            assert st.ops.status()["alerts_firing"][0]["labels"] == {"team": "general"}
        n.cancel_scope.cancel()
