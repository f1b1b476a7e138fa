"""Intent engine benchmark: one command, prints a table (and --json for the numbers).

    .venv/bin/python benchmarks/nlp_bench.py [--data ../shared/data] [--clinc .cache/nlp/clinc150] [--compare DIR]

Measures the shipped model (nlp/models/banking77) as served ("served": with its early exit)
and, for a model that has one, with every layer for every message ("all layers"), on:
- accuracy and macro-F1 on kefu's BANKING77 held-out split (the same stratified 10%,
  seed 77, that training held out; never trained on), and accuracy on kefu's separate
  Chinese held-out messages (scripts/nlp/data/zh/heldout.csv, never trained on);
- single-message latency (tokenize + infer + head), one onnxruntime thread, p50/p99
  over every held-out message sent one at a time; the same with sentiment included;
- micro-batched throughput through the trio IntentService (concurrent callers, one thread);
- sentiment on benchmarks/data/sentiment_cs.csv (English, VADER) and sentiment_cs_zh.csv
  (Chinese, kefu's lexicon), small hand-labelled sets;
- with --compare DIR (repeatable): another model folder as served, in the same run, so
  that speeds are compared on one machine in one sitting;
- few-shot head: CLINC150 intents defined by 5 example phrases each, scored on CLINC150 val;
- CLINC150 out-of-scope: in-scope accuracy and OOS recall on val + oos_val for a model
  trained by scripts/nlp/build_clinc150.sh (skipped, with the command, when absent).

Targets (docs/nlp.md): accuracy >= 94% on the official test split, p50 <= 1 ms, p99 <= 3 ms,
>= 1000 msg/s, CLINC150 OOS recall >= 85% with in-scope accuracy >= 94%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # noqa: E402 (benchmarks run from a checkout)

from kefu.nlp import data as D  # noqa: E402
from kefu.nlp.classifier import IntentClassifier  # noqa: E402
from kefu.nlp.encoder import Encoder  # noqa: E402
from kefu.nlp.heads import FewShotHead  # noqa: E402
from kefu.nlp.classifier import Sentiment  # noqa: E402


def banking_heldout(data_dir: Path) -> D.Labelled:
    rows = D.read_csv(data_dir / "banking77" / "train.csv")
    _, held = D.stratified_split(rows, D.DEFAULT_HOLDOUT, D.DEFAULT_SEED)
    return rows.subset(held)


def chinese_heldout() -> D.Labelled:
    """kefu's Chinese held-out messages for the 77 intents (never trained on)."""
    return D.read_csv(ROOT / "scripts" / "nlp" / "data" / "zh" / "heldout.csv")


def accuracy_block(clf: IntentClassifier, held: D.Labelled) -> dict:
    preds = []
    bar = D.Progress(len(held), "banking77 held-out")
    for s in range(0, len(held), 64):
        preds += clf.classify_batch(held.texts[s:s + 64])
        bar.update(min(64, len(held) - s))
    bar.close()
    pred = [p.intent for p in preds]
    flagged = sum(p.out_of_scope for p in preds) / len(preds)
    exited = sum(p.early_exit for p in preds) / len(preds)
    correct_kept = sum(p.intent == g and not p.out_of_scope for p, g in zip(preds, held.labels)) / len(preds)
    return {"n": len(held), "accuracy": D.accuracy(held.labels, pred), "macro_f1": D.macro_f1(held.labels, pred),
            "flagged_oos": flagged, "accuracy_with_threshold": correct_kept, "early_exit": exited}


def latency_block(enc: Encoder, clf: IntentClassifier, texts: list[str], rounds: int) -> dict:
    """Per message, one at a time: tokenize + infer + heads ("bare": the same classifier without
    sentiment), then the whole classify()."""
    plain = IntentClassifier(enc, early_exit=clf.early_exit)
    for t in texts[:50]:
        clf.classify(t)
        plain.classify(t)
    bare, full = [], []
    for _ in range(rounds):
        for t in texts:
            a = time.perf_counter()
            plain.classify(t)
            bare.append((time.perf_counter() - a) * 1000)
        for t in texts:
            a = time.perf_counter()
            clf.classify(t)
            full.append((time.perf_counter() - a) * 1000)
    tokens = sorted(len(x) for x in enc.tokenize(texts))
    return {"n": len(bare), "p50": D.percentile(bare, 50), "p99": D.percentile(bare, 99),
            "full_p50": D.percentile(full, 50), "full_p99": D.percentile(full, 99),
            "median_tokens": tokens[len(tokens) // 2]}


def throughput_block(clf: IntentClassifier, texts: list[str], total: int, callers: int, batch: int) -> dict:
    import trio

    from kefu.nlp.service import IntentService

    msgs = (texts * (total // len(texts) + 1))[:total]
    result = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(clf, batch_size=batch, max_wait_ms=2).run)
            await service.classify_many(msgs[:200])  # warm-up
            service.batches = service.messages = 0
            it = iter(msgs)
            lat = []

            async def caller() -> None:
                for text in it:
                    p = await service.classify(text)
                    lat.append(p.latency_ms)

            t0 = time.perf_counter()
            async with trio.open_nursery() as callers_n:
                for _ in range(callers):
                    callers_n.start_soon(caller)
            dt = time.perf_counter() - t0
            result.update(msgs_per_s=total / dt, mean_batch=service.messages / max(service.batches, 1),
                          p50=D.percentile(lat, 50), p99=D.percentile(lat, 99))
            nursery.cancel_scope.cancel()

    trio.run(main)
    # The same messages straight through the encoder in sorted batches, for reference.
    t0 = time.perf_counter()
    for s in range(0, total, batch):
        clf.classify_batch(msgs[s:s + batch])
    result["direct_msgs_per_s"] = total / (time.perf_counter() - t0)
    return result


def sentiment_block(name: str = "sentiment_cs.csv") -> dict:
    rows = D.read_csv(ROOT / "benchmarks" / "data" / name)
    s = Sentiment("vader")
    t0 = time.perf_counter()
    pred = [s(t).label for t in rows.texts]
    us = (time.perf_counter() - t0) / len(rows) * 1e6
    neg_tp = sum(g == p == "negative" for g, p in zip(rows.labels, pred))
    return {"n": len(rows), "accuracy": D.accuracy(rows.labels, pred), "macro_f1": D.macro_f1(rows.labels, pred),
            "negative_precision": neg_tp / max(pred.count("negative"), 1),
            "negative_recall": neg_tp / rows.labels.count("negative"), "us_per_message": us}


def few_shot_block(enc: Encoder, data_dir: Path, shots: int = 5) -> dict:
    splits = D.read_clinc(data_dir / "clinc150" / "train_val.json")
    train, val = splits["train"], splits["val"]
    rng = random.Random(7)
    by: dict[str, list[str]] = {}
    for t, y in zip(train.texts, train.labels):
        by.setdefault(y, []).append(t)
    names = sorted(by)
    phrases, which = [], []
    for i, n in enumerate(names):
        for t in rng.sample(by[n], shots):
            phrases.append(t)
            which.append(i)
    _, emb = enc.run(phrases)
    _, vemb = enc.run(val.texts)
    out = {"intents": len(names), "shots": shots, "n": len(val)}
    for kind in ("logistic", "prototype"):
        t0 = time.perf_counter()
        head = FewShotHead(names, emb, np.array(which), kind=kind)
        out[f"{kind}_build_ms"] = (time.perf_counter() - t0) * 1000
        res, _ = head(vemb)
        out[f"{kind}_accuracy"] = D.accuracy(val.labels, [names[i] for i in res.index])
    return out


def clinc_block(folder: Path, threads: int) -> dict | None:
    model, held = folder / "model", folder / "heldout.csv"
    if not model.is_dir() or not held.is_file():
        return None
    rows = D.read_csv(held)
    clf = IntentClassifier(Encoder(model, threads=threads))
    preds = []
    for s in range(0, len(rows), 64):
        preds += clf.classify_batch(rows.texts[s:s + 64])
    flagged = ["oos" if p.out_of_scope else p.intent for p in preds]
    res = D.oos_scores(rows.labels, flagged, "oos")
    ins = [i for i, y in enumerate(rows.labels) if y != "oos"]
    res["accuracy_no_threshold"] = D.accuracy([rows.labels[i] for i in ins], [preds[i].intent for i in ins])
    res["threshold"] = clf.threshold
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("KEFU_DATA", ROOT.parent / "shared" / "data")))
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped one)")
    p.add_argument("--compare", type=Path, action="append", default=[], metavar="DIR",
                   help="also measure this model folder as served, in the same run (a column named after it)")
    p.add_argument("--clinc", type=Path, default=ROOT / ".cache" / "nlp" / "clinc150")
    p.add_argument("--rounds", type=int, default=2, help="passes over the held-out set for latency")
    p.add_argument("--total", type=int, default=4000, help="messages for the throughput run")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()

    enc = Encoder(args.model, threads=1)
    held = banking_heldout(args.data)
    zh = chinese_heldout()
    r = {"model": str(enc.info.folder), "layers": enc.info.meta.get("layers"),
         "exit_layer": enc.info.exit.layer if enc.info.exit else None}
    # "served": what kefu runs by default (the early exit, when the model has one);
    # "all layers": every message through every layer; then each --compare model as served.
    modes = {"served": IntentClassifier(enc, sentiment=Sentiment("vader"))}
    encoders = {"served": enc}
    if enc.has_exit:
        modes["all layers"] = IntentClassifier(enc, sentiment=Sentiment("vader"), early_exit=False)
        encoders["all layers"] = enc
    for folder in args.compare:
        other = Encoder(folder, threads=1)
        name = folder.name
        modes[name] = IntentClassifier(other, sentiment=Sentiment("vader"))
        encoders[name] = other
    for mode, clf in modes.items():
        r[mode] = {
            "accuracy": accuracy_block(clf, held),
            "accuracy_zh": accuracy_block(clf, zh),
            "latency": latency_block(encoders[mode], clf, held.texts, args.rounds),
            "latency_zh": latency_block(encoders[mode], clf, zh.texts, args.rounds),
            "throughput": throughput_block(clf, held.texts, args.total, callers=256, batch=32),
        }
    r["sentiment"] = sentiment_block()
    r["sentiment_zh"] = sentiment_block("sentiment_cs_zh.csv")
    r["few_shot"] = few_shot_block(enc, args.data)
    r["clinc"] = clinc_block(args.clinc, threads=1)

    se, fs, cl = (r[k] for k in ("sentiment", "few_shot", "clinc"))

    def per_mode(fmt, acc="accuracy", lat="latency") -> list[str]:
        return [fmt(r[m][acc], r[m][lat], r[m]["throughput"]) for m in modes]

    la = r["served"]["latency"]
    lz = r["served"]["latency_zh"]
    sz = r["sentiment_zh"]
    rows = [
        ("BANKING77 held-out accuracy", per_mode(lambda a, la, th: f"{100 * a['accuracy']:.2f}%"),
         ">= 94% (official test)"),
        (f"Chinese held-out accuracy ({zh.__len__()} rows, 77 intents)",
         per_mode(lambda a, la, th: f"{100 * a['accuracy']:.2f}%", acc="accuracy_zh"), ">= 85%"),
        ("  flagged out of scope / correct and kept", per_mode(
            lambda a, la, th: f"{100 * a['flagged_oos']:.1f}% / {100 * a['accuracy_with_threshold']:.2f}%",
            acc="accuracy_zh"), ""),
        (f"Chinese single message p50 / p99 (median {lz['median_tokens']} tokens)",
         per_mode(lambda a, la, th: f"{la['p50']:.3f} / {la['p99']:.3f} ms", lat="latency_zh"), "<= 3 ms p50"),
        ("BANKING77 held-out macro-F1", per_mode(lambda a, la, th: f"{100 * a['macro_f1']:.2f}%"), ""),
        ("  flagged out of scope / correct and kept", per_mode(
            lambda a, la, th: f"{100 * a['flagged_oos']:.1f}% / {100 * a['accuracy_with_threshold']:.2f}%"), ""),
        ("  answered at the early exit", per_mode(lambda a, la, th: f"{100 * a['early_exit']:.1f}%"), ""),
        (f"single message p50 (1 thread, median {la['median_tokens']} tokens)",
         per_mode(lambda a, la, th: f"{la['p50']:.3f} ms"), "<= 1 ms"),
        ("single message p99 (1 thread)", per_mode(lambda a, la, th: f"{la['p99']:.3f} ms"), "<= 3 ms"),
        ("  with sentiment and Prediction: p50 / p99",
         per_mode(lambda a, la, th: f"{la['full_p50']:.3f} / {la['full_p99']:.3f} ms"), ""),
        ("micro-batched throughput, trio service (1 thread)",
         per_mode(lambda a, la, th: f"{th['msgs_per_s']:.0f} msg/s"), ">= 1000 msg/s"),
        ("  mean batch / latency p50 / p99 under that load",
         per_mode(lambda a, la, th: f"{th['mean_batch']:.1f} / {th['p50']:.1f} / {th['p99']:.1f} ms"), ""),
        ("  direct classify_batch(32), no service",
         per_mode(lambda a, la, th: f"{th['direct_msgs_per_s']:.0f} msg/s"), ""),
        ("sentiment (VADER) accuracy / macro-F1", [f"{100 * se['accuracy']:.1f}% / {100 * se['macro_f1']:.1f}%"],
         f"{se['n']} hand-labelled"),
        ("  negative: precision / recall", [f"{100 * se['negative_precision']:.1f}% / "
         f"{100 * se['negative_recall']:.1f}%"], f"{se['us_per_message']:.0f} us/msg"),
        ("Chinese sentiment (kefu lexicon) accuracy / macro-F1",
         [f"{100 * sz['accuracy']:.1f}% / {100 * sz['macro_f1']:.1f}%"], f"{sz['n']} hand-labelled"),
        ("  negative: precision / recall", [f"{100 * sz['negative_precision']:.1f}% / "
         f"{100 * sz['negative_recall']:.1f}%"], f"{sz['us_per_message']:.0f} us/msg"),
        (f"few-shot, {fs['intents']} CLINC150 intents x {fs['shots']} phrases: logistic",
         [f"{100 * fs['logistic_accuracy']:.2f}%"], f"built in {fs['logistic_build_ms']:.0f} ms"),
        ("  prototype", [f"{100 * fs['prototype_accuracy']:.2f}%"], f"built in {fs['prototype_build_ms']:.0f} ms"),
    ]
    if cl:
        rows += [
            ("CLINC150 held-out in-scope accuracy (threshold on)", [f"{100 * cl['in_scope_accuracy']:.2f}%"], ">= 94%"),
            ("CLINC150 held-out OOS recall", [f"{100 * cl['oos_recall']:.2f}%"], ">= 85%"),
            ("  in-scope accuracy without threshold / threshold", [f"{100 * cl['accuracy_no_threshold']:.2f}% / "
             f"{cl['threshold']:.3f}"], f"{cl['in_scope']} + {cl['oos']} rows"),
        ]
    else:
        rows.append(("CLINC150 out-of-scope", ["not measured"],
                     f"build: scripts/nlp/build_clinc150.sh ../shared/data {args.clinc}"))
    w = max(len(x[0]) for x in rows)
    exit_note = f", early exit after layer {r['exit_layer']}" if r["exit_layer"] else ""
    print(f"\nmodel: {r['model']} ({r['layers']} layers{exit_note})")
    print(f"{'measure'.ljust(w)}  " + "  ".join(f"{m[:22]:>22}" for m in modes) + "  target / note")
    print(f"{'-' * w}  " + "  ".join("-" * 22 for _ in modes) + f"  {'-' * 24}")
    for name, vals, note in rows:
        if name.strip().startswith("answered at the early exit") and not r["exit_layer"]:
            continue
        cells = vals + [""] * (len(modes) - len(vals))
        print(f"{name.ljust(w)}  " + "  ".join(f"{v:>22}" for v in cells) + f"  {note}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
