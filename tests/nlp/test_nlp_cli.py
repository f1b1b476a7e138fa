"""`kefu nlp classify` and `kefu nlp eval` as an operator runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from kefu.cli import main


def test_classify_prints_intent_confidence_sentiment_scope_and_time(capsys):
    assert main(["nlp", "classify", "I lost my card", "this is the WORST bank, I'm furious"]) == 0
    out = capsys.readouterr().out
    first, second = out.split("this is the WORST bank")
    assert "intent: lost_or_stolen_card" in first and "confidence: 0." in first
    assert re.search(r"sentiment: \w+ \([+-]\d\.\d\d\)  time: \d+\.\d\d ms", first)
    assert "OUT OF SCOPE" not in first and "[early exit]" in first  # an easy one: 3 of 6 layers
    assert "sentiment: negative" in second
    assert main(["nlp", "classify", "--no-early-exit", "I lost my card"]) == 0
    out = capsys.readouterr().out
    assert "intent: lost_or_stolen_card" in out and "[early exit]" not in out


def test_classify_json(capsys):
    assert main(["nlp", "classify", "--json", "My card still hasn't arrived"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["intent"] == "card_arrival"
    assert set(row) >= {"intent", "confidence", "out_of_scope", "sentiment", "sentiment_score", "latency_ms",
                        "early_exit"}


def test_classify_reads_standard_input():
    r = subprocess.run([sys.executable, "-m", "kefu.cli", "nlp", "classify", "--json"],
                       input="I lost my card\n我的卡丢了\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["text"] for x in rows] == ["I lost my card", "我的卡丢了"]
    assert rows[0]["intent"] == "lost_or_stolen_card"


def test_classify_with_a_broken_model_exits_2_naming_the_file(tmp_path, capsys):
    assert main(["nlp", "classify", "--model", str(tmp_path), "hello"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "model.onnx") in err and "kefu nlp" in err


def test_classify_reads_nlp_config(tmp_path, capsys):
    cfg = tmp_path / "kefu.toml"
    cfg.write_text('[nlp]\nsentiment = "off"\nuse_model_intents = false\n'
                   '[[nlp.intents]]\nname = "human"\nexamples = ["talk to a person", "get me an agent"]\n',
                   encoding="utf-8")
    assert main(["nlp", "classify", "--config", str(cfg), "let me talk to an agent"]) == 0
    out = capsys.readouterr().out
    assert "intent: human" in out and "[few_shot]" in out


def test_eval_reports_accuracy_confusions_oos_and_latency(tmp_path, capsys):
    f = tmp_path / "eval.csv"
    f.write_text("text,category\n"
                 "I lost my card,lost_or_stolen_card\n"
                 "someone stole my card,lost_or_stolen_card\n"
                 "what exchange rate do you use,exchange_rate\n"
                 "my top up failed,top_up_failed\n"
                 "I lost my card,card_arrival\n"
                 "what is the tallest mountain on earth,oos\n", encoding="utf-8")
    assert main(["nlp", "eval", str(f)]) == 0
    out = capsys.readouterr().out
    assert "5 in scope, 1 labelled 'oos'" in out
    assert re.search(r"accuracy \(in-scope rows, best intent\) +80\.00%", out)
    assert "macro-F1" in out and "out-of-scope recall" in out and "p99" in out
    assert "card_arrival -> lost_or_stolen_card: 1" in out
    assert re.search(r"answered at the early exit \(all rows\) +\d+\.\d\d%", out)
    assert main(["nlp", "eval", "--no-early-exit", str(f)]) == 0
    assert "answered at the early exit" not in capsys.readouterr().out


def test_eval_json_and_bad_file(tmp_path, capsys):
    f = tmp_path / "bad.csv"
    f.write_text("words,stuff\nhello,x\n", encoding="utf-8")
    assert main(["nlp", "eval", str(f)]) == 2
    assert "bad.csv:1" in capsys.readouterr().err


def test_train_without_torch_says_what_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as on a server without the train extra\n"
        "from kefu.cli import main\n"
        f"sys.exit(main(['nlp', 'train', {str(tmp_path / 'x.csv')!r}]))\n"
    )
    (tmp_path / "x.csv").write_text("text,category\na,x\nb,y\nc,x\nd,y\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "pip install 'kefu[train]'" in r.stderr


def test_training_settings_are_checked_before_any_work(tmp_path):
    import argparse

    from kefu.nlp.train import TrainError, _split

    rows = "".join(f"{w} {i},{lab}\n" for i in range(6) for w, lab in (("card", "x"), ("rate", "y")))
    (tmp_path / "d.csv").write_text("text,category\n" + rows, encoding="utf-8")
    args = dict(data=str(tmp_path / "d.csv"), oos_label="oos", oos_file=None, holdout=0.3, seed=1,
                knn_weight=0.1, knn_k=5, knn_temperature=0.02, oos_recall=0.0)
    assert _split(argparse.Namespace(**args))[2] == ["x", "y"]
    for bad, words in (({"oos_recall": 0.9}, "out-of-scope examples"), ({"oos_recall": 1.5}, "between 0 and 1"),
                       ({"knn_weight": 2.0}, "--knn-weight"), ({"knn_k": 0}, "--knn-k")):
        with pytest.raises(TrainError, match="--oos-recall|--knn") as e:
            _split(argparse.Namespace(**{**args, **bad}))
        assert words in str(e.value)
    # Settings an older checkpoint never recorded get their defaults (no neighbours).
    old = {k: v for k, v in args.items() if not k.startswith(("knn", "oos_recall"))}
    ns = argparse.Namespace(**old)
    _split(ns)
    assert ns.knn_weight == 0.0 and ns.knn_k == 5
