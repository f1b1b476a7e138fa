"""Chinese and English: the message catalogues, and the desk speaking each customer's language.

The catalogues (kefu/locales/) are checked for what a translator could get wrong: a key in one
language only, a placeholder lost or renamed, a Chinese text left in English. The desk is driven
as in test_desk.py (trio timers on autojump_clock, the published topics as the customer sees them).
"""

from __future__ import annotations

import json
import re

import pytest

from kefu import i18n
from kefu.bot import AnswersError, BotSettings, decide, load_answers, parse_answers
from kefu.routing import Route

from .conftest import ROOT, Pred

OUT = "kefu/c/{}/main/out"
CJK = re.compile(r"[\u4e00-\u9fff]")
SAME_IN_BOTH = {"lang.en", "lang.zh-CN", "console.field.custom"}  # names of languages; a bare placeholder
NO_CHINESE = {"lang.en", "console.field.custom"}


def test_every_key_is_in_every_catalogue_with_the_same_placeholders():
    en, zh = i18n.catalogue("en"), i18n.catalogue("zh-CN")
    assert set(en) == set(zh), f"only English: {sorted(set(en) - set(zh))}; only Chinese: {sorted(set(zh) - set(en))}"
    for key in en:
        assert en[key].strip() and zh[key].strip(), key
        assert set(i18n.PLACEHOLDER.findall(en[key])) == set(i18n.PLACEHOLDER.findall(zh[key])), key
        if key not in SAME_IN_BOTH:
            assert zh[key] != en[key], f"{key}: the Chinese text is still the English one"
        if key not in NO_CHINESE:
            assert CJK.search(i18n.PLACEHOLDER.sub("", zh[key])), f"{key}: no Chinese in {zh[key]!r}"


def test_catalogue_files_are_plain_json_objects_of_strings():
    for lang in i18n.LANGUAGES:
        doc = json.loads((ROOT / "kefu" / "locales" / f"{lang}.json").read_text(encoding="utf-8"))
        assert all(isinstance(v, str) for v in doc.values()), lang


@pytest.mark.parametrize("tag, lang", [
    ("zh-CN", "zh-CN"), ("zh", "zh-CN"), ("zh-Hans-CN", "zh-CN"), ("zh_TW", "zh-CN"), ("ZH-sg", "zh-CN"),
    ("en", "en"), ("en-GB", "en"), ("fr-FR", None), ("", None), (None, None), (7, None),
])
def test_language_tags_are_matched_loosely(tag, lang):
    assert i18n.normalize(tag) == lang


def test_pick_takes_the_first_language_served():
    assert i18n.pick(["fr-FR", "zh-TW", "en"]) == "zh-CN"
    assert i18n.pick("de-DE,en-US;q=0.8,zh;q=0.5") == "en"
    assert i18n.pick(["fr", "de"]) == "en" and i18n.pick(["fr"], default=None) is None
    doc = i18n.document("ja,zh-Hans")
    assert doc["language"] == "zh-CN" and doc["messages"]["widget.send"] == "发送"


def test_wait_texts():
    assert i18n.wait_text("zh-CN", None) == "暂时无法估计（目前没有客服在线）"
    assert i18n.wait_text("zh-CN", 30) == "不到 1 分钟"
    assert i18n.wait_text("zh-CN", 300) == "约 5 分钟"
    assert i18n.wait_text("en", 90) == "about 2 minutes" and i18n.wait_text("en", 61) == "about 1 minute"


# --- bot answers --------------------------------------------------------------------------------

def test_shipped_answers_have_a_chinese_text_for_every_intent():
    ans = load_answers(ROOT / "config" / "answers.toml")
    missing = [k for k, a in ans.answers.items() if "zh-CN" not in a.langs]
    assert not missing
    for intent, a in ans.answers.items():
        zh = a.in_language("zh-CN")
        text = ans.render(zh.text, {}, "zh-CN")
        assert CJK.search(text) and "Kefu Bank" not in text and "{" not in text, intent
        if a.retry:
            assert zh.retry and CJK.search(zh.retry), f"{intent}: the retry text has no Chinese version"


def test_answers_pick_the_customers_language_and_fall_back_to_the_plain_one():
    ans = parse_answers({
        "variables": {"bank": "Kefu Bank", "zh-CN": {"bank": "客服银行"}},
        "answers": {"card_arrival": {"text": "{bank} cards arrive in 3 days.", "zh-CN": {"text": "{bank}的卡 3 天内送达。"}},
                    "exchange_rate": {"text": "Interbank."}},
    })
    s = BotSettings()
    kw = dict(route=Route("(default)", "general", 2, "bot"), answers=ans, settings=s, last_intent=None, failures=0, contact={})
    assert decide("卡什么时候到", Pred("card_arrival"), lang="zh-CN", **kw).text == "客服银行的卡 3 天内送达。"
    assert decide("when", Pred("card_arrival"), lang="en", **kw).text == "Kefu Bank cards arrive in 3 days."
    assert decide("汇率", Pred("exchange_rate"), lang="zh-CN", **kw).text == "Interbank."  # no Chinese answer: the plain one
    assert decide("人工", Pred("card_arrival"), lang="zh-CN", **kw).text == "正在为您转接人工客服，请稍候。"
    kw["last_intent"] = "card_arrival"
    again = decide("还是没到", Pred("card_arrival"), lang="zh-CN", **kw)
    assert again.failed and again.text == "我再试着回答一次：客服银行的卡 3 天内送达。"
    set_msg = BotSettings(handoff_message="One moment.")
    assert decide("人工", Pred("card_arrival"), lang="zh-CN", **{**kw, "settings": set_msg}).text == "One moment."


def test_answers_refuse_an_unknown_language_or_variable():
    with pytest.raises(AnswersError, match=r"answers.x.fr: not a language"):
        parse_answers({"answers": {"x": {"text": "a", "fr": {"text": "b"}}}})
    with pytest.raises(AnswersError, match=r"answers.x.zh-CN.text: unknown variable \{shop\}"):
        parse_answers({"answers": {"x": {"text": "a", "zh-CN": {"text": "{shop}"}}}})
    with pytest.raises(AnswersError, match=r"variables.de: not a language"):
        parse_answers({"variables": {"de": {"a": "b"}}})


# --- the desk ------------------------------------------------------------------------------------

async def start(nursery, make_desk, **kw):
    desk = make_desk(**kw)
    await nursery.start(desk.run)
    return desk


async def test_a_chinese_visitor_reads_every_system_message_in_chinese(nursery, autojump_clock, make_desk, recorder):
    desk = await start(nursery, make_desk)
    # the widget's hello sets the contact's language (bridge/chat.py: profile.language)
    await desk.set_contact("wang", attributes={"language": "zh-CN", "locale": "zh-CN"})
    r = await desk.customer_message("chat", "wang", "我要找人工客服")
    cid = r["conversation"]["id"]
    texts = recorder.texts(OUT.format("wang"))
    assert texts[-2:] == ["正在为您转接人工客服，请稍候。", "您目前排在第 1 位，预计等待：暂时无法估计（目前没有客服在线）。"]
    await desk.agent_connected("alice")
    await desk.agent_action("alice", "accept", cid)
    assert recorder.texts(OUT.format("wang"))[-1] == "Alice 已加入对话。"
    await desk.agent_action("alice", "resolve", cid)
    assert recorder.texts(OUT.format("wang"))[-1] == "您对本次服务满意吗？请回复 1（很不满意）到 5（非常满意）之间的数字。"

    # an English visitor on the same desk still reads English
    await desk.set_contact("ann", attributes={"language": "en"})
    await desk.customer_message("chat", "ann", "human please")
    assert recorder.texts(OUT.format("ann"))[0] == "I'm passing you to a colleague who can help."


async def test_browser_locale_alone_picks_chinese_and_the_bot_answers_in_chinese(nursery, autojump_clock, make_desk,
                                                                                   recorder):
    from kefu.bot import Answer, Answers

    answers = Answers({"days": "3-5"}, {"card_arrival": Answer("Cards arrive in {days} days.", "",
                                                               {"zh-CN": Answer("银行卡 {days} 天内送达。")})})
    desk = await start(nursery, make_desk, answers=answers)
    await desk.set_contact("li", attributes={"locale": "zh-TW"})  # an older widget: navigator.language only
    await desk.customer_message("chat", "li", "my card, when will it arrive")
    assert recorder.texts(OUT.format("li"))[-1] == "银行卡 3-5 天内送达。"


async def test_desk_language_is_the_default_and_a_device_can_name_its_own(nursery, autojump_clock, make_desk, recorder):
    from kefu.config import from_dict
    from kefu.hours import from_config

    hours = from_config(from_dict({"business_hours": {"enabled": True, "mon": "", "tue": "", "wed": "", "thu": "",
                                                      "fri": "", "sat": "", "sun": ""}}).business_hours)
    desk = await start(nursery, make_desk, language="zh-CN", hours=hours)
    await desk.customer_message("mqtt", "dev-9", "human")  # a device that names no language: [desk] language
    assert recorder.texts(OUT.format("dev-9"))[:2] == ["正在为您转接人工客服，请稍候。",
                                                       "我们现在不在工作时间。请留言，我们上班后会尽快回复您。"]
    # an English-speaking device says so in its message; the desk keeps it on the contact
    await desk.ingest("kefu/c/dev-en/main/in", json.dumps({"type": "message", "text": "human", "language": "en-US"}).encode())
    await desk.turns_settled()  # the broker's intake leaves the bot's turn to the background
    assert recorder.texts(OUT.format("dev-en"))[0] == "I'm passing you to a colleague who can help."
    assert (await desk.contact("dev-en"))["attributes"]["language"] == "en"
    await desk.ingest("kefu/c/dev-x/main/in", json.dumps({"type": "message", "text": "hi", "language": "klingon"}).encode())
    err = recorder.on("kefu/c/dev-x/main/events")[-1]
    assert err["type"] == "error" and "language" in err["message"]


async def test_agent_language_is_kept_and_checked(nursery, autojump_clock, make_desk):
    from kefu.errors import Invalid

    desk = await start(nursery, make_desk)
    assert (await desk.agent_action("alice", "language", language="zh-CN"))["language"] == "zh-CN"
    assert (await desk.agent("alice"))["language"] == "zh-CN"
    with pytest.raises(Invalid):
        await desk.agent_action("alice", "language", language="fr")


def test_config_gives_the_starting_console_language_and_the_agents_choice_is_kept():
    from dataclasses import replace

    from kefu.agents import from_config, merge_config
    from kefu.config import from_dict
    from kefu.settings import from_config as settings_from_config

    s = settings_from_config(from_dict({"agents": [{"id": "chen", "teams": ["general"], "language": "zh-CN"}]}))
    configured = s.agents[0]
    assert configured.language == "zh-CN"
    assert merge_config(None, configured).language == "zh-CN"
    chose_en = replace(merge_config(None, configured), language="en")
    assert merge_config(chose_en, configured).language == "en"  # a restart keeps what the agent chose
    assert from_config(from_dict({"agents": [{"id": "x"}]}).agents[0]).language == ""


def test_guess_reads_only_clear_chinese():
    assert i18n.guess("我的银行卡丢了，怎么办？") == "zh-CN"
    assert i18n.guess("T-200 显示 E4 错误") == "zh-CN"
    assert i18n.guess("E4") is None and i18n.guess("my card 丢 is gone") is None and i18n.guess("ok") is None


async def test_a_device_that_names_no_language_but_writes_chinese_reads_chinese(nursery, autojump_clock, make_desk,
                                                                               recorder):
    desk = await start(nursery, make_desk)  # [desk] language: en
    await desk.customer_message("mqtt", "fridge-2", "冰箱一直报警，我要找人工")
    assert recorder.texts(OUT.format("fridge-2"))[-2] == "正在为您转接人工客服，请稍候。"
    assert (await desk.contact("fridge-2"))["attributes"]["language"] == "zh-CN"
    await desk.customer_message("mqtt", "dev-3", "E4 human")  # nothing to go on: [desk] language
    assert recorder.texts(OUT.format("dev-3"))[-2] == "I'm passing you to a colleague who can help."
    # a language the customer named is not overruled by what it writes
    await desk.set_contact("ann", attributes={"language": "en"})
    await desk.customer_message("chat", "ann", "请帮我转人工")
    assert recorder.texts(OUT.format("ann"))[-2] == "I'm passing you to a colleague who can help."
