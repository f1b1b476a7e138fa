"""Chinese customers through the desk's routing with the shipped model and sentiment: an angry
Chinese message raises priority the way an angry English one does, a lost card goes to the VIP
team in either language, and a calm question keeps the default route."""

from __future__ import annotations

import pytest

from kefu.nlp.classifier import IntentClassifier, Sentiment
from kefu.nlp.encoder import Encoder
from kefu.routing import Route, Router, Rule


@pytest.fixture(scope="module")
def shipped():
    return IntentClassifier(Encoder(threads=1), sentiment=Sentiment("vader"))


ROUTER = Router(
    [
        Rule("lost-card", "vip", 0, "human", intent=("lost_or_stolen_card",)),
        Rule("unhappy", "general", 1, "human", sentiment=("negative",)),
    ],
    Route("(default)", "general", 2, "bot"),
)


@pytest.mark.parametrize("customer,text,team,priority", [
    ("en-angry", "This is ridiculous, nobody has answered me for three days!", "general", "high"),
    ("zh-angry", "太离谱了，三天了都没人回我，你们这是什么破服务！", "general", "high"),
    ("en-lost", "I lost my card", "vip", "urgent"),
    ("zh-lost", "我的银行卡丢了", "vip", "urgent"),
    ("zh-calm", "请问你们的汇率是多少", None, "normal"),  # the bot keeps it: no team yet
])
async def test_chinese_messages_route_like_english_ones(make_desk, nursery, shipped, customer, text, team, priority):
    desk = make_desk(classify=shipped.classify, router=ROUTER)
    await nursery.start(desk.run)
    r = await desk.customer_message("chat", customer, text)
    conv = r["conversation"]
    assert (conv["team"], conv["priority"]) == (team, priority), (text, shipped.classify(text))
