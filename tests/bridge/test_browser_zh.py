"""Chinese in the browser: a visitor whose browser speaks zh-CN, an agent whose console is set to
Chinese. Headless Chromium (Debian's package, driven by Playwright for Python) against a whole
kefu over real sockets; screenshots go to test-artifacts/ (widget-zh.png, console-zh.png).
"""

from __future__ import annotations

import re

import pytest

from test_browser import T, LiveKefu, shot  # noqa: F401 - the same harness as test_browser.py

from bridge_stack import AGENT_TOKENS, kefu_stack

pytestmark = pytest.mark.browser
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture
def kefu():
    with LiveKefu(kefu_stack) as k:
        yield k


def sign_in(console, http: str, agent: str = "alice") -> None:
    console.goto(http + "/console")
    console.fill("#token", AGENT_TOKENS[agent])
    console.click("#signin-form button")
    console.wait_for_selector("#app:not([hidden])", timeout=T)


def untranslated(page) -> list[str]:
    """Texts and attributes of the console's own words (not conversation data) without Chinese."""
    return page.evaluate(r"""() => {
      const cjk = /[\u4e00-\u9fff]/, bad = [];
      const visible = (e) => !e.closest("[hidden]");
      document.querySelectorAll("[data-i18n]").forEach((e) => {
        if (visible(e) && e.dataset.i18n !== "lang.en" && !cjk.test(e.textContent)) bad.push(e.dataset.i18n + ": " + e.textContent);
      });
      document.querySelectorAll("[data-i18n-attr]").forEach((e) => {
        e.dataset.i18nAttr.split(";").forEach((p) => {
          const name = p.split(":")[0];
          if (visible(e) && !cjk.test(e.getAttribute(name) || "")) bad.push(name + ": " + e.getAttribute(name));
        });
      });
      ["#conn", "#a-accept", "#a-transfer option", "#canned option:first-child", ".tabs span", "#profile dt", "#convinfo dt",
       "#device dt"].forEach((sel) => document.querySelectorAll(sel).forEach((e) => {
        if (visible(e) && !e.hidden && e.textContent.trim() && !cjk.test(e.textContent)) bad.push(sel + ": " + e.textContent);
      }));
      return bad;
    }""")


def test_chinese_visitor_and_chinese_console(kefu, browser):
    st = kefu.st
    # The visitor's browser prefers Chinese: the widget speaks it, and tells the server.
    widget = browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 800}).new_page()
    widget.goto(st.http + "/demo")
    widget.locator("#kefu-widget .bubble").click()
    widget.locator("#kefu-widget .status").filter(has_text="我们通常会在几分钟内回复").wait_for(timeout=T)
    assert widget.locator("#kefu-widget .title").inner_text() == "在线客服"
    assert widget.locator("#kefu-widget .send").inner_text() == "发送"
    assert widget.locator("#kefu-widget textarea").get_attribute("placeholder") == "请输入消息…"
    assert widget.locator("#kefu-widget .greet").inner_text() == "您好！请问有什么可以帮您？"

    box = widget.locator("#kefu-widget textarea")
    box.fill("你好，我的银行卡丢了，怎么办？")
    box.press("Enter")
    # No agent online: the bot hands off and the queue position comes, both in Chinese.
    widget.locator("#kefu-widget .msg.them").filter(has_text="正在为您转接人工客服").wait_for(timeout=T)
    widget.locator("#kefu-widget .msg.sys").filter(has_text="您目前排在第 1 位").wait_for(timeout=T)
    widget.locator("#kefu-widget .queue").filter(has_text="您目前排在第 1 位，客服很快就来").wait_for(timeout=T)
    visitor = widget.evaluate("window.__kefuWidget.state.me")
    contact = kefu.run(st.desk.contact, visitor)
    assert contact["attributes"]["language"] == "zh-CN"

    # Alice's browser is English; she switches her console to Chinese.
    console = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 850}).new_page()
    sign_in(console, st.http)
    console.wait_for_selector("#conn:text('live')", timeout=T)
    assert console.locator(".tabs button[data-tab=mine] span").inner_text() == "Mine"
    console.select_option("#me-lang", "zh-CN")
    console.locator("#conn").filter(has_text="已连接").wait_for(timeout=T)
    assert console.locator(".tabs button[data-tab=mine] span").inner_text() == "我的"
    assert kefu.run(st.desk.agent, "alice")["language"] == "zh-CN"  # kept with the agent

    item = console.locator("#convs li").filter(has_text=visitor)
    item.wait_for(timeout=T)
    item.click()
    console.locator("#msgs .m.customer").filter(has_text="银行卡丢了").wait_for(timeout=T)
    console.locator("#a-accept").filter(has_text="接受").click()  # the offer, accepted
    console.locator("#msgs .m.system").filter(has_text="Alice 已加入对话。").wait_for(timeout=T)
    widget.locator("#kefu-widget .msg.sys").filter(has_text="Alice 已加入对话。").wait_for(timeout=T)

    console.fill("#text", "您好，我马上为您挂失这张卡，请稍等。")
    console.locator("#text").press("Enter")
    widget.locator("#kefu-widget .msg.them").filter(has_text="马上为您挂失").wait_for(timeout=T)
    box.fill("好的，谢谢！")
    box.press("Enter")
    console.locator("#msgs .m.customer").filter(has_text="好的，谢谢").wait_for(timeout=T)
    widget.locator("#kefu-widget .meta.read").filter(has_text="已读").wait_for(timeout=T)
    assert "已分配" in console.locator("#t-sub").inner_text()
    assert untranslated(console) == []
    shot(console, "console-zh.png")
    shot(widget, "widget-zh.png")

    # The choice is the agent's, not the browser's: a fresh English browser opens it in Chinese.
    again = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 850}).new_page()
    sign_in(again, st.http)
    again.locator("#conn").filter(has_text="已连接").wait_for(timeout=T)
    assert again.locator("#signout").inner_text() == "退出登录" and again.evaluate("document.documentElement.lang") == "zh-CN"

    console.click("#a-resolve")
    widget.locator("#kefu-widget .msg.sys").filter(has_text="您对本次服务满意吗").wait_for(timeout=T)
    widget.locator("#kefu-widget .status").filter(has_text="对话已结束").wait_for(timeout=T)
    shot(widget, "widget-zh-csat.png")


def test_site_sets_the_widget_language_over_the_browser(kefu, browser):
    st = kefu.st
    page = browser.new_context(locale="zh-CN").new_page()
    page.goto(st.http + "/")  # any page of ours: add the widget with data-lang="en"
    page.evaluate("""(src) => { const s = document.createElement("script"); s.src = src; s.dataset.site = "demo";
                               s.dataset.lang = "en"; document.body.appendChild(s); }""", st.http + "/widget.js")
    page.locator("#kefu-widget .bubble").click()
    page.locator("#kefu-widget .status").filter(has_text="We typically reply in a few minutes").wait_for(timeout=T)
    assert page.locator("#kefu-widget .send").inner_text() == "Send"
    # the index page itself follows the browser: Chinese
    assert page.locator("a[href='/console']").inner_text() == "客服工作台"


def test_mqtt_device_names_its_language_and_reads_chinese(kefu):
    """A real MQTT client (paho) as a device: its JSON message names zh-CN; the desk answers in Chinese."""
    import json
    import queue

    import paho.mqtt.client as mqtt

    st = kefu.st
    got: queue.Queue = queue.Queue()
    dev = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fridge-7")
    dev.username_pw_set("fridge-7")
    dev.on_message = lambda c, u, m: got.put(json.loads(m.payload))
    subscribed = queue.Queue()
    dev.on_subscribe = lambda *a: subscribed.put(True)
    dev.connect("127.0.0.1", st.mqtt_port)
    dev.loop_start()
    try:
        dev.subscribe("kefu/c/fridge-7/main/out", qos=1)
        assert subscribed.get(timeout=10)
        dev.publish("kefu/c/fridge-7/main/in", json.dumps(
            {"type": "message", "text": "冰箱显示故障代码 E4，请帮忙", "language": "zh-CN"}, ensure_ascii=False), qos=1)
        texts = []
        while len(texts) < 2:
            f = got.get(timeout=10)
            if f.get("type") == "message" and f["message"]["author"]["kind"] != "customer":
                texts.append(f["message"]["text"])
        assert texts == ["正在为您转接人工客服，请稍候。", "您目前排在第 1 位，预计等待：暂时无法估计（目前没有客服在线）。"]
        # the language stays with the contact: later system messages are Chinese too
        kefu.run(st.desk.agent_connected, "alice")
        conv = kefu.run(st.desk.open_conversation_of, "fridge-7", "main")
        kefu.run(lambda: st.desk.agent_action("alice", "accept", conv["id"]))
        while True:
            f = got.get(timeout=10)
            if f.get("type") == "message" and f["message"]["author"]["kind"] == "system":
                assert f["message"]["text"] == "Alice 已加入对话。"
                break
    finally:
        dev.disconnect()
        dev.loop_stop()
