"""Routing works the same in Chinese: a lost card takes the demo bank's urgent VIP route.

The whole of kefu (``kefu.app.run``, as ``kefu serve --config config/demo.toml`` wires it) with
config/demo.toml as shipped -- its routing rules, teams, agents and answers.toml, the shipped
bilingual intent model -- changed only where a test must: every listener on port 0, SQLite in
tmp_path, and API tokens for Vera (the VIP agent) and an operator. Real clients over real
sockets: a paho-mqtt device, the widget in a zh-CN headless Chromium (Debian's package, driven
by Playwright), and Vera's agent console, switched to Chinese. Screenshots go to test-artifacts/
(zh-vip-widget.png, zh-vip-console.png).

1. An anonymous device (the customer ``anon:<client id>``) writes 我的银行卡丢了，怎么办 as
   plain text: the REST API (operator token, and Vera's own) shows its conversation queued for
   the ``vip`` team at ``urgent`` priority with the intent ``lost_or_stolen_card``, handed off by
   the rule without a bot answer; the device reads the desk's messages in Chinese.
2. A widget visitor whose browser speaks zh-CN writes 我的卡被偷了: the same route; and so does
   a device writing the English "I lost my bank card, what do I do?" (its messages in English).
3. Vera signs in, switches her console to Chinese, sees both conversations, opens the device's,
   accepts it; the device reads "Vera 已加入对话。".

Both messages were chosen with a clear margin in the shipped model (checked by the first test),
so the route does not hang on the last digits of the CPU's arithmetic.
"""

from __future__ import annotations

import functools
import json
import queue
import re
import sys
import threading
import tomllib
import urllib.parse
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from kefu.app import run
from kefu.bridge.identity import sha256_hex
from kefu.config import from_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
sys.path.insert(0, str(ROOT / "tests" / "bridge"))
from test_browser import T, LiveKefu, shot  # noqa: E402 - the browser harness of tests/bridge

TOKENS = {"vera": "tok-vera-zh-0123456789"}
OPERATOR = "tok-operator-zh-0123456789"
DEVICE_TEXT = "我的银行卡丢了，怎么办"
WIDGET_TEXT = "我的卡被偷了"
ENGLISH_TEXT = "I lost my bank card, what do I do?"
LOST_CARD = "lost_or_stolen_card"
CJK = re.compile(r"[\u4e00-\u9fff]")
WAIT = 10.0  # seconds any one expected frame may take


def demo_config(tmp: Path):
    """config/demo.toml as shipped, on port 0, storing in ``tmp``, with tokens for Vera and an operator."""
    data = tomllib.loads((CONFIG_DIR / "demo.toml").read_text())
    assert "nlp" not in data  # the shipped model, as `kefu serve` loads it
    data["listeners"] = {
        "mqtt": {"host": "127.0.0.1", "port": 0},
        "ws": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
    }
    data["storage"] = {"backend": "sqlite", "path": str(tmp / "kefu.db")}
    data.setdefault("mqtt", {})["sys_interval"] = 0
    data["api"] = {"tokens": [
        *({"name": a, "token_sha256": sha256_hex(t), "role": "agent", "agent": a} for a, t in TOKENS.items()),
        {"name": "ops", "token_sha256": sha256_hex(OPERATOR), "role": "operator"},
    ]}
    return from_dict(data)


def vip_route() -> dict:
    """The demo's lost-card rule, read from the file (so the test follows the config)."""
    data = tomllib.loads((CONFIG_DIR / "demo.toml").read_text())
    rule = next(r for r in data["routing"]["rules"] if LOST_CARD in r.get("intent", []))
    assert (rule["team"], rule["priority"], rule["handler"]) == ("vip", "urgent", "human")
    return rule


@asynccontextmanager
async def demo_kefu(tmp: Path):
    async with trio.open_nursery() as nursery:
        app = await nursery.start(functools.partial(run, demo_config(tmp), base_dir=CONFIG_DIR))
        app.http = app.bridge.http_url
        try:
            yield app
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
def kefu(tmp_path):
    with LiveKefu(lambda: demo_kefu(tmp_path)) as k:
        yield k


def api(base: str, path: str, token: str, **query) -> dict:
    url = f"{base}/api/v1{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
    req = urllib.request.Request(url, headers={"api_access_token": token})
    with urllib.request.urlopen(req, timeout=WAIT) as r:
        return json.loads(r.read())


def routed(base: str, customer: str, token: str = OPERATOR) -> dict:
    """The customer's one conversation, as the REST API shows it to ``token``."""
    listed = api(base, "/conversations", token, customer=customer)["data"]["payload"]
    assert len(listed) == 1, listed
    return api(base, f"/conversations/{listed[0]['id']}", token)["data"]


class Device:
    """An anonymous paho-mqtt device: the customer ``anon:<client id>``."""

    def __init__(self, port: int, cid: str) -> None:
        import paho.mqtt.client as mqtt

        self.customer = "anon:" + cid
        self.frames: queue.Queue = queue.Queue()
        subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.frames.put(json.loads(m.payload))
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(f"kefu/c/{self.customer}/main/out", qos=1)
        assert subscribed.wait(WAIT), "no SUBACK"

    def say(self, text: str) -> None:
        self.c.publish(f"kefu/c/{self.customer}/main/in", text.encode(), qos=1).wait_for_publish(WAIT)

    def until(self, what: str, pred) -> dict:
        while True:
            try:
                f = self.frames.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"{self.customer}: no {what} within {WAIT} s") from None
            if pred(f):
                return f

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def desk_text(f: dict) -> bool:
    return f.get("type") == "message" and f["message"]["author"]["kind"] in ("system", "bot")


def test_the_messages_are_clear_for_the_shipped_model():
    """Both messages land on the lost-card intent with a wide margin, in scope: no CPU's rounding flips them."""
    from kefu.nlp.classifier import IntentClassifier
    from kefu.nlp.encoder import Encoder

    rule = vip_route()
    model = IntentClassifier(Encoder(None, threads=1))
    for text in (DEVICE_TEXT, WIDGET_TEXT, ENGLISH_TEXT):
        p = model.classify(text)
        assert p.intent == LOST_CARD and not p.out_of_scope, p
        # measured: 0.92, 0.87 (runner-up compromised_card 0.08, itself on the same route) and 0.96
        assert p.confidence >= 0.75, p
        assert p.intent in rule["intent"]


@pytest.mark.browser
def test_chinese_lost_card_takes_the_urgent_vip_route(kefu, browser):
    app = kefu.st
    base = app.http
    rule = vip_route()
    want = {"intent": LOST_CARD, "team": rule["team"], "priority": rule["priority"], "status": "queued"}

    # --- 1. a device writes Chinese, as plain text -----------------------------------------
    dev = Device(app.port("mqtt"), "zh-card-1")
    try:
        dev.say(DEVICE_TEXT)
        queued = dev.until("queue message", lambda f: desk_text(f) and "排在第" in f["message"]["text"])
        assert queued["message"]["text"].startswith("您目前排在第 1 位"), queued
        conv = routed(base, dev.customer)
        assert {k: conv[k] for k in want} == want, conv
        assert conv["assignee"] is None and conv["handoff_reason"] == f"rule:{rule['name']}", conv
        assert routed(base, dev.customer, TOKENS["vera"])["id"] == conv["id"]  # Vera's team sees it
        msgs = api(base, f"/conversations/{conv['id']}/messages", OPERATOR)["data"]["payload"]
        said = [(m["author"]["kind"], m["text"]) for m in msgs]
        assert said[0] == ("customer", DEVICE_TEXT), said
        # the rule skips the bot's answers: it only says, in Chinese, that a person takes over
        bot_turns = [m["meta"].get("handoff") for m in msgs if m["author"]["kind"] == "bot"]
        assert bot_turns == [f"rule:{rule['name']}"], msgs
        desk_said = [t for k, t in said if k != "customer"]
        assert desk_said == ["正在为您转接人工客服，请稍候。", queued["message"]["text"]], said
        contact = api(base, f"/contacts/{urllib.parse.quote(dev.customer)}", OPERATOR)["data"]
        assert contact["attributes"]["language"] == "zh-CN", contact

        # --- 2. a widget visitor in a zh-CN browser ----------------------------------------
        widget = browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 800}).new_page()
        widget.goto(base + "/demo")
        widget.locator("#kefu-widget .bubble").click()
        widget.locator("#kefu-widget .status").filter(has_text="我们通常会在几分钟内回复").wait_for(timeout=T)
        box = widget.locator("#kefu-widget textarea")
        box.fill(WIDGET_TEXT)
        box.press("Enter")
        # urgent behind the device's urgent conversation: second in the VIP queue
        widget.locator("#kefu-widget .queue").filter(has_text="您目前排在第 2 位").wait_for(timeout=T)
        visitor = widget.evaluate("window.__kefuWidget.state.me")
        wconv = routed(base, visitor)
        assert {k: wconv[k] for k in want} == want, wconv
        shot(widget, "zh-vip-widget-queued.png")

        # --- the same in English: a device that writes it, third in the same queue ----------
        en = Device(app.port("mqtt"), "en-card-1")
        try:
            en.say(ENGLISH_TEXT)
            q = en.until("queue message", lambda f: desk_text(f) and "in the queue" in f["message"]["text"])
            assert not CJK.search(q["message"]["text"]) and "3" in q["message"]["text"], q
            econv = routed(base, en.customer)
            assert {k: econv[k] for k in want} == want, econv
            assert econv["handoff_reason"] == conv["handoff_reason"]
        finally:
            en.close()

        # --- 3. Vera, the VIP agent, in a console set to Chinese ------------------------------
        console = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 850}).new_page()
        console.goto(base + "/console")
        console.fill("#token", TOKENS["vera"])
        console.click("#signin-form button")
        console.wait_for_selector("#conn:text('live')", timeout=T)
        console.select_option("#me-lang", "zh-CN")
        console.locator("#conn").filter(has_text="已连接").wait_for(timeout=T)
        for who in (dev.customer, visitor):
            console.locator("#convs li").filter(has_text=who).wait_for(timeout=T)
        item = console.locator("#convs li").filter(has_text=dev.customer)
        item.click()
        console.locator("#msgs .m.customer").filter(has_text="银行卡丢了").wait_for(timeout=T)
        console.locator("#a-accept").filter(has_text="接受").click()
        console.locator("#msgs .m.system").filter(has_text="Vera 已加入对话。").wait_for(timeout=T)
        joined = dev.until("Vera joining", lambda f: desk_text(f) and "Vera" in f["message"]["text"])
        assert joined["message"]["text"] == "Vera 已加入对话。"
        after = routed(base, dev.customer)
        assert (after["assignee"], after["team"], after["priority"]) == ("vera", "vip", "urgent"), after
        shot(console, "zh-vip-console.png")
        console.locator("#convs li").filter(has_text=visitor).click()
        console.locator("#msgs .m.customer").filter(has_text="卡被偷了").wait_for(timeout=T)
        console.locator("#a-accept").filter(has_text="接受").wait_for(timeout=T)  # offered to her too
        assert routed(base, visitor)["assignee"] == "vera"  # within her capacity of 3
        shot(console, "zh-vip-console-widget-conv.png")
        shot(widget, "zh-vip-widget.png")
    finally:
        dev.close()
