"""The dashboard in headless Chromium (Debian's package, Playwright for Python, no browser download)
against a live kefu with a week of stored history: every chart draws, the range switch reads the
roll-ups, nothing fails in the page. Screenshots go to test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ops_stack import LiveKefu, config, demo_history

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
T = 15_000  # ms; each wait ends as soon as the page is ready
CHARTS = ("c-traffic", "c-latency", "c-queue", "c-wait", "c-agents", "c-intents", "c-containment", "c-sla")


async def seed(st) -> None:
    """A week of history plus live state: alice online with one conversation, one waiting for vip."""
    await st.store.record_metrics(demo_history(time.time()))
    await st.store.run_in_writer(lambda conn: None)  # committed
    await st.ops.sampler.history.rollup(time.time(), lag=15)
    await st.desk.agent_action("alice", "sign_in")
    await st.desk.customer_message("mqtt", "cust-1", "my card is gone")
    await st.desk.customer_message("chat", "cust-2", "hello")
    await st.desk.agent_action(None, "transfer", "cv-2", team="vip")


@pytest.fixture(scope="module")
def kefu(tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("dash"))
    with LiveKefu(cfg, prepare=seed) as k:
        yield k


def test_dashboard_draws_every_chart_from_stored_history(kefu, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(kefu.st.http + "/dashboard?range=1h")
    page.wait_for_selector("body[data-ready='1']", timeout=T)
    for cid in CHARTS:
        assert page.locator(f"#{cid} canvas").count() == 1, cid
        assert page.locator(f"#{cid} .empty").inner_text() == "", cid  # every chart has data in the hour
    tiles = dict(zip(page.locator(".tile .k").all_text_contents(), page.locator(".tile .v").all_text_contents()))
    assert tiles["Agents online"] == "1" and tiles["Waiting"] == "1"
    assert tiles["Bot containment"].endswith("%") and tiles["CSAT"].endswith("/ 5")
    assert "raw samples" in page.locator("#source").inner_text()
    # the traffic legend names both channels and the broker's own figures
    legend = page.locator("#c-traffic .u-legend").inner_text()
    for label in ("in · mqtt", "in · chat", "MQTT in", "MQTT out"):
        assert label in legend
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-1h.png"), full_page=True)

    page.click("#ranges button[data-range='7d']")
    page.wait_for_selector("body[data-ready='1']", timeout=T)
    assert "roll-ups" in page.locator("#source").inner_text()
    assert page.locator("#ranges button.on").inner_text() == "7 d"
    assert page.locator("#c-traffic .empty").inner_text() == ""
    page.screenshot(path=str(ARTIFACTS / "dashboard-7d.png"), full_page=True)
    assert problems == []
    page.close()


def test_dashboard_says_when_it_cannot_load(kefu, browser):
    page = browser.new_page()
    page.route("**/ops/series*", lambda route: route.fulfill(
        status=503, content_type="application/json", body='{"error": "unavailable", "message": "history is off"}'))
    page.goto(kefu.st.http + "/dashboard")
    page.wait_for_selector("body[data-ready='error']", timeout=T)
    assert page.locator("#error").inner_text() == "Cannot load metrics: history is off"
    page.close()


def test_dashboard_in_chinese(kefu, browser):
    """A browser that prefers Chinese gets the dashboard in Chinese (?lang= can name another)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1500}, locale="zh-CN")
    page.goto(kefu.st.http + "/dashboard?range=1h")
    page.wait_for_selector("body[data-ready='1']", timeout=T)
    tiles = dict(zip(page.locator(".tile .k").all_text_contents(), page.locator(".tile .v").all_text_contents()))
    assert tiles["在线客服"] == "1" and tiles["排队中"] == "1"
    assert page.locator("#c-traffic").locator("xpath=..").locator("figcaption span").inner_text() == "消息流量"
    assert page.locator("#ranges button.on").inner_text() == "1 小时"
    legend = page.locator("#c-agents .u-legend").inner_text()
    assert "在线" in legend and "占用率 %" in legend
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-zh.png"), full_page=True)
    page.goto(kefu.st.http + "/dashboard?range=1h&lang=en")
    page.wait_for_selector("body[data-ready='1']", timeout=T)
    assert page.locator("#ranges button.on").inner_text() == "1 h"
    page.close()
