"""Early exit and nearest-example voting on a model in parts.

The fixture ``tiny_zh_exit`` is a 2-layer Chinese BERT trained with ``--exit-layer 1`` by
``scripts/nlp/train_smoke.py --exit-layer 1`` (front.onnx + back.onnx, no model.onnx, and
neighbours.onnx with its training rows' vectors).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kefu.config import ConfigError, from_dict
from kefu.nlp.classifier import IntentClassifier, from_config
from kefu.nlp.encoder import Encoder, ModelError, read_info
from kefu.nlp.heads import Neighbours, choose_exit_threshold, softmax

TINY_EXIT = Path(__file__).resolve().parent / "data" / "tiny_zh_exit"
TEXTS = ["我的卡丢了", "转人工", "今天美元汇率是多少", "转账失败了", "卡", "我想和真人说话，我的卡也丢了，怎么办？"]


@pytest.fixture(scope="module")
def enc() -> Encoder:
    return Encoder(TINY_EXIT)


def test_the_folder_holds_two_parts_and_an_exit(enc):
    info = read_info(TINY_EXIT)
    assert info.exit is not None and info.exit.layer == 1
    assert info.graph_files == ("front.onnx", "back.onnx")
    assert not (TINY_EXIT / "model.onnx").exists()
    assert enc.has_exit


def test_run_is_the_full_model_whatever_the_threshold(enc):
    logits, emb = enc.run(TEXTS)
    assert logits.shape == (len(TEXTS), 4) and emb.shape[0] == len(TEXTS)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    # Nobody exits above confidence 1: the cascade then is exactly the full model.
    full, exited, _ = enc.run_cascade(TEXTS, threshold=1.01)
    assert not exited.any()
    assert np.allclose(full, logits, atol=1e-5)


def test_everyone_exits_at_threshold_zero_with_the_exit_heads_answer(enc):
    early, _, _ = enc.run_all(TEXTS)
    logits, exited, emb = enc.run_cascade(TEXTS, threshold=0.0)
    assert exited.all() and not emb.any()  # the upper layers never ran
    # Rescaled so that the final head's temperature yields the exit head's own calibration.
    ex = enc.info.exit
    assert np.allclose(softmax(logits / enc.info.temperature), softmax(early / ex.temperature), atol=1e-5)


def test_cascade_mixes_per_message(enc):
    early, full, _ = enc.run_all(TEXTS)
    conf = softmax(early / enc.info.exit.temperature).max(1)
    th = float(np.median(conf))
    logits, exited, emb = enc.run_cascade(TEXTS, threshold=th)
    assert exited.tolist() == (conf >= th).tolist()
    assert 0 < exited.sum() < len(TEXTS)
    # The rest ran every layer; dynamic int8 quantisation scales activations per batch, so
    # leaving rows out moves the logits in the third decimal, never the decision.
    assert np.allclose(logits[~exited], full[~exited], atol=0.05)
    assert (logits[~exited].argmax(1) == full[~exited].argmax(1)).all()
    assert np.allclose(np.linalg.norm(emb[~exited], axis=1), 1.0, atol=1e-4) and not emb[exited].any()
    assert (logits[exited].argmax(1) == early[exited].argmax(1)).all()


def test_classifier_reports_early_exit_and_can_turn_it_off(enc):
    fast = IntentClassifier(enc, early_exit=True, early_exit_threshold=0.0)
    full = IntentClassifier(enc, early_exit=False)
    fp = fast.classify_batch(TEXTS)
    assert all(p.early_exit and not p.out_of_scope for p in fp)
    slow = full.classify_batch(TEXTS)
    assert not any(p.early_exit for p in slow)
    # The neighbours' vote may settle a near tie of the head ("卡" alone: two logits within a
    # few hundredths, which int8 kernels order differently per CPU); elsewhere the head decides.
    logits = enc.run(TEXTS)[0]
    top2 = np.sort(logits, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.5
    assert [p.intent for p, c in zip(slow, clear) if c] == [enc.labels[i] for i, c in zip(logits.argmax(1), clear) if c]
    assert fast.classify("我的卡丢了").intent == "lost_card"


def test_few_shot_intents_need_the_full_model(enc):
    clf = IntentClassifier(enc, few_shot={"greeting": ["你好", "早上好", "嗨"]})
    assert not clf.early_exit
    assert not any(p.early_exit for p in clf.classify_batch(TEXTS))


def test_an_own_oos_threshold_needs_the_full_model(enc):
    assert IntentClassifier(enc).early_exit
    assert not IntentClassifier(enc, oos_threshold=5.0).early_exit


def test_config_switches_and_validates_the_exit():
    cfg = from_dict({"nlp": {"model": str(TINY_EXIT), "early_exit": False}})
    assert not from_config(cfg.nlp).early_exit
    cfg = from_dict({"nlp": {"model": str(TINY_EXIT), "early_exit_threshold": 0.99}})
    clf = from_config(cfg.nlp)
    assert clf.early_exit and clf.early_exit_threshold == 0.99
    with pytest.raises(ConfigError) as e:
        from_dict({"nlp": {"early_exit_threshold": 1.5}})
    assert "nlp.early_exit_threshold" in str(e.value) and "0-1" in str(e.value)


@pytest.mark.parametrize("name", ["front.onnx", "back.onnx", "neighbours.onnx"])
def test_a_missing_or_broken_part_is_a_start_up_error_naming_it(tmp_path, name):
    dst = tmp_path / "m"
    shutil.copytree(TINY_EXIT, dst)
    (dst / name).unlink()
    with pytest.raises(ModelError) as e:
        Encoder(dst)
    assert str(dst / name) in str(e.value) and "missing" in str(e.value)
    shutil.copytree(TINY_EXIT, dst, dirs_exist_ok=True)
    (dst / name).write_bytes(b"garbage" * 50)
    with pytest.raises(ModelError) as e:
        Encoder(dst)
    assert str(dst / name) in str(e.value)


def test_a_bad_exit_entry_names_labels_json(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(TINY_EXIT, dst)
    meta = json.loads((dst / "labels.json").read_text(encoding="utf-8"))
    meta["early_exit"]["threshold"] = 3
    (dst / "labels.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError) as e:
        read_info(dst)
    assert "labels.json" in str(e.value) and "early_exit" in str(e.value)


def test_exit_threshold_is_the_lowest_within_budget():
    # Five held-out rows, the full model gets all right; the exit head is wrong on the
    # row it is 0.7 sure of. Budget 0: exiting may cost nothing, so stop above 0.7.
    conf = np.array([0.99, 0.95, 0.9, 0.7, 0.5])
    exit_ok = np.array([True, True, True, False, True])
    full_ok = np.ones(5, dtype=bool)
    r = choose_exit_threshold(conf, exit_ok, full_ok, max_accuracy_drop=0.0)
    assert r["threshold"] == 0.9 and r["exit_rate"] == 0.6 and r["accuracy"] == 1.0
    # A budget of one row in five lets the 0.7 row exit too, and then the 0.5 row (right).
    r = choose_exit_threshold(conf, exit_ok, full_ok, max_accuracy_drop=0.2)
    assert r["threshold"] == 0.5 and r["exit_rate"] == 1.0 and r["accuracy"] == pytest.approx(0.8)
    # Out-of-scope examples the full model flags must not slip out at the exit.
    r = choose_exit_threshold(conf, exit_ok, full_ok, np.array([0.92, 0.3]), np.array([True, True]),
                              max_accuracy_drop=0.2, max_recall_drop=0.0)
    assert r["threshold"] == 0.95 and r["oos_recall"] == 1.0
    # Nobody may exit when even the most confident row is wrong and there is no budget.
    r = choose_exit_threshold(conf, ~exit_ok, full_ok, max_accuracy_drop=0.0)
    assert r["exit_rate"] == 0.0 and r["accuracy"] == 1.0


def test_neighbours_vote_by_similarity_and_mix_lightly():
    def search(emb):  # two rows: nearest labels and cosines, as neighbours.onnx gives them
        return (np.array([[0.9, 0.8, 0.1], [0.5, 0.5, 0.5]], dtype=np.float32),
                np.array([[2, 1, 1], [0, 1, 2]], dtype=np.int64))

    nb = Neighbours(search, n_labels=3, temperature=0.1, weight=0.2)
    vote = nb.vote(np.zeros((2, 4), dtype=np.float32))
    w = np.exp(np.array([0.9, 0.8, 0.1]) / 0.1)
    assert vote[0] == pytest.approx([0.0, (w[1] + w[2]) / w.sum(), w[0] / w.sum()])
    assert vote[1] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    probs = np.array([[0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    mixed = nb.mix(probs, np.zeros((2, 4), dtype=np.float32))
    assert mixed == pytest.approx(0.8 * probs + 0.2 * vote)
    assert mixed.sum(axis=1) == pytest.approx([1.0, 1.0])


def test_neighbours_vote_only_where_the_final_layer_ran(enc):
    assert enc.neighbours is not None and enc.info.neighbours["file"] == "neighbours.onnx"
    head_only = IntentClassifier(enc, early_exit=False, neighbours=False)
    voting = IntentClassifier(enc, early_exit=False)
    logits, emb = enc.run(TEXTS)
    probs = enc.neighbours.mix(head_only.head(logits).probs, emb)
    got = voting.classify_batch(TEXTS)
    assert [p.intent for p in got] == [enc.labels[i] for i in probs.argmax(1)]
    assert [p.confidence for p in got] == pytest.approx(probs.max(1).tolist(), abs=1e-6)
    # Messages answered at the exit never reach the vectors the vote needs: untouched.
    fast = IntentClassifier(enc, early_exit_threshold=0.0).classify_batch(TEXTS)
    plain_fast = IntentClassifier(enc, early_exit_threshold=0.0, neighbours=False).classify_batch(TEXTS)
    assert [p.to_dict() | {"latency_ms": 0} for p in fast] == [p.to_dict() | {"latency_ms": 0} for p in plain_fast]


def test_config_turns_the_vote_off():
    assert from_config(from_dict({"nlp": {"model": str(TINY_EXIT)}}).nlp).neighbours is not None
    assert from_config(from_dict({"nlp": {"model": str(TINY_EXIT), "neighbours": False}}).nlp).neighbours is None
