"""Few-shot intents from config phrases (no torch), calibration and the threshold rule, CJK models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kefu.config import ConfigError, from_dict
from kefu.nlp.classifier import ConfigProblem, IntentClassifier, few_shot_from_config, from_config
from kefu.nlp.encoder import Encoder
from kefu.nlp.heads import (choose_threshold, expected_calibration_error, fit_temperature, softmax,
                            threshold_for_recall)

TINY_ZH = Path(__file__).resolve().parent / "data" / "tiny_zh"

SHOTS = {
    "talk_to_human": ["I want to talk to a real person", "connect me to an agent please",
                      "can I speak with someone from support", "get me a human", "transfer me to customer service"],
    "opening_hours": ["when are you open", "what are your opening hours", "are you open on sundays",
                      "what time does the branch close", "office hours please"],
    "delete_account": ["please delete my account", "I want to close my account for good",
                       "how do I remove all my data and cancel", "shut down my account", "terminate my membership"],
}


def _config(**nlp):
    return from_dict({"nlp": {"sentiment": "off", **nlp}}).nlp


@pytest.mark.parametrize("kind", ["logistic", "prototype"])
def test_few_shot_intents_from_config_only(kind):
    nlp = _config(intents=[{"name": k, "examples": v} for k, v in SHOTS.items()], use_model_intents=False,
                  few_shot_head=kind, few_shot_min_similarity=0.5)
    clf = from_config(nlp)
    assert clf.intents == list(SHOTS)
    cases = {
        "could I please chat with an actual human being": "talk_to_human",
        "is the office open on saturday": "opening_hours",
        "I'd like my account deleted": "delete_account",
    }
    for text, intent in cases.items():
        p = clf.classify(text)
        assert (p.intent, p.source, p.out_of_scope) == (intent, "few_shot", False), (text, p)


def test_few_shot_without_model_intents_flags_everything_else(encoder):
    clf = IntentClassifier(encoder, few_shot={"talk_to_human": SHOTS["talk_to_human"]}, use_model_intents=False,
                           few_shot_min_similarity=0.6)
    p = clf.classify("what's the exchange rate for yen")
    assert p.out_of_scope and p.source == "few_shot"


def test_few_shot_intents_sit_on_top_of_the_model(encoder):
    clf = IntentClassifier(encoder, few_shot=SHOTS, few_shot_min_similarity=0.7)
    assert clf.classify("connect me to an agent please").intent == "talk_to_human"
    lost = clf.classify("I lost my card")
    assert (lost.intent, lost.source) == ("lost_or_stolen_card", "model")


def test_few_shot_head_is_built_without_torch():
    code = (
        "import sys\n"
        "from kefu.config import from_dict\n"
        "from kefu.nlp.classifier import from_config\n"
        "nlp = from_dict({'nlp': {'use_model_intents': False, 'intents': [\n"
        "  {'name': 'human', 'examples': ['talk to a person', 'get me an agent']},\n"
        "  {'name': 'hours', 'examples': ['when are you open', 'opening hours']}]}}).nlp\n"
        "print(from_config(nlp).classify('I need to talk to an agent').intent)\n"
        "assert 'torch' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "human"


@pytest.mark.parametrize("entries,where", [
    ([{"name": "", "examples": ["x"]}], "nlp.intents[0].name"),
    ([{"name": "a", "examples": []}], "nlp.intents[0].examples"),
    ([{"name": "a", "examples": ["ok", 3]}], "nlp.intents[0].examples[1]"),
    ([{"name": "a", "examples": ["x"]}, {"name": "a", "examples": ["y"]}], "nlp.intents[1].name"),
])
def test_bad_few_shot_entries_name_the_key(entries, where):
    with pytest.raises(ConfigProblem) as e:
        few_shot_from_config(entries)
    assert str(e.value).startswith(where)


def test_model_intents_off_needs_few_shot_intents():
    with pytest.raises(ConfigProblem, match="nlp.use_model_intents"):
        from_config(_config(use_model_intents=False))


def test_nlp_config_keys_are_checked():
    with pytest.raises(ConfigError) as e:
        from_dict({"nlp": {"threads": 0, "oos_threshold": "high", "sentiment": "textblob", "intents": [{"nam": "x"}]}})
    text = str(e.value)
    for key in ("nlp.threads", "nlp.oos_threshold", "nlp.sentiment", "nlp.intents[0].nam"):
        assert key in text


def test_config_threshold_overrides_the_model(encoder):
    # The shipped model scores scope by energy; the override is in those units.
    strict = IntentClassifier(encoder, oos_threshold=1000.0)
    assert strict.classify("I lost my card").out_of_scope
    lax = IntentClassifier(encoder, oos_threshold=-1000.0)
    assert not lax.classify("what is the capital of peru").out_of_scope
    own = IntentClassifier(encoder)
    assert own.threshold == encoder.info.oos_threshold


# ---- calibration and threshold rule ---------------------------------------------


def test_temperature_fit_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(0)
    n, k = 4000, 10
    true_logits = rng.normal(0, 2.0, (n, k))
    gold = np.array([rng.choice(k, p=softmax(z)) for z in true_logits])
    t = fit_temperature(true_logits * 3.0, gold)  # a model three times too confident
    assert t == pytest.approx(3.0, rel=0.1)
    raw = softmax(true_logits * 3.0)
    cal = softmax(true_logits * 3.0 / t)
    correct = raw.argmax(1) == gold
    assert expected_calibration_error(cal.max(1), correct) < expected_calibration_error(raw.max(1), correct)


def test_threshold_rule_spends_at_most_the_accuracy_budget():
    conf_in = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    correct = np.array([True, True, True, True, True, True, True, True, False, False])
    conf_oos = np.array([0.1, 0.25, 0.45, 0.65])
    r = choose_threshold(conf_in, correct, conf_oos, max_accuracy_drop=0.1)
    # Base accuracy 0.8; one correct row (0.4) may be given up, not two.
    assert r["threshold"] == pytest.approx(0.5)
    assert r["in_scope_accuracy"] == pytest.approx(0.7)
    assert r["oos_recall"] == pytest.approx(0.75)
    assert choose_threshold(conf_in, correct, None, 0.0)["threshold"] == pytest.approx(0.4)


def test_recall_rule_flags_the_asked_share_at_the_least_cost():
    conf_in = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    correct = np.array([True, True, True, True, True, True, True, True, False, False])
    conf_oos = np.array([0.1, 0.25, 0.45, 0.65])
    r = threshold_for_recall(conf_in, correct, conf_oos, 0.75)  # catch 3 of 4: the lowest such threshold
    assert 0.45 < r["threshold"] < 0.5 and r["oos_recall"] == 0.75
    assert r["in_scope_accuracy"] == pytest.approx(0.7)  # the correct row at 0.4 is lost, no more
    assert threshold_for_recall(conf_in, correct, conf_oos, 1.0)["oos_recall"] == 1.0
    assert threshold_for_recall(conf_in, correct, conf_oos, 0.2)["oos_recall"] == 0.25
    with pytest.raises(ValueError):
        threshold_for_recall(conf_in, correct, conf_oos[:0], 0.5)


# ---- a Chinese model: CJK through tokenizer, model, heads and service -----------


def test_chinese_model_classifies_chinese_text():
    clf = IntentClassifier(Encoder(TINY_ZH))
    assert clf.classify("我的卡丢了").intent == "lost_card"
    assert clf.classify("今天美元汇率是多少").intent == "exchange_rate"
    for text in ("我要找人工客服!!", "ｶｰﾄﾞ", "😀", "", "汇" * 500, "mixed 中文 and English"):
        p = clf.classify(text)
        assert p.intent in clf.intents and 0 <= p.confidence <= 1


def test_chinese_tokenizer_splits_characters():
    enc = Encoder(TINY_ZH)
    ids = enc.tokenize(["我的卡丢了"])[0]
    assert len(ids) == 2 + 5  # [CLS] + one token per character + [SEP]
    assert 1 not in ids[1:-1]  # no [UNK]: every character is in the vocabulary


def test_chinese_few_shot_intents_on_the_chinese_encoder():
    enc = Encoder(TINY_ZH)
    clf = IntentClassifier(enc, few_shot={"挂失": ["我的卡丢了", "银行卡被偷了"], "汇率": ["美元汇率", "欧元汇率"]},
                           use_model_intents=False, few_shot_min_similarity=0.0)
    assert clf.classify("我的卡丢了").intent == "挂失"


def test_energy_scope_keeps_what_softmax_throws_away():
    from kefu.nlp.heads import IntentHead

    head = IntentHead(["a", "b"], temperature=1.0, oos_threshold=5.0, oos_score="energy")
    strong, weak = head(np.array([[10.0, 9.0]])), head(np.array([[1.0, 0.0]]))
    assert strong.confidence[0] == pytest.approx(weak.confidence[0])  # same softmax
    assert strong.scope[0] > 5.0 > weak.scope[0]  # only the strongly excited one is in scope
    assert weak.scope[0] == pytest.approx(np.log(np.e + 1.0))


def test_config_problems_without_loading_the_model(tmp_path):
    from kefu.nlp.classifier import config_problems

    assert config_problems(_config()) == []
    got = config_problems(_config(model=str(tmp_path), use_model_intents=False,
                                  intents=[{"name": "x", "examples": []}]))
    assert got[0].startswith("nlp.intents[0].examples")
    assert any(p.startswith("nlp.model: intent model file") and str(tmp_path) in p for p in got)
    assert config_problems(from_dict({"nlp": {"enabled": False, "model": str(tmp_path)}}).nlp) == []
