"""`kefu nlp ...`: classify, train, export and evaluate intent models.

Parses, calls ``kefu.nlp``, prints. ``train`` and ``export`` need the ``train`` extra
(torch); ``classify`` and ``eval`` need only the runtime (onnxruntime, tokenizers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

EPILOG = """\
examples:
  kefu nlp classify "I lost my card"            intent, confidence, sentiment, out-of-scope, ms
  kefu nlp eval test.csv                         accuracy, macro-F1, confusions, latency
  kefu nlp train data.csv --out my-model         fine-tune (pip install 'kefu[train]')
  kefu nlp train data.csv --base ./bert-base-chinese --out zh-model
  kefu nlp export my-model/checkpoint.pt --out my-model   re-export and re-quantise
"""


def _classifier(args: argparse.Namespace):
    """An IntentClassifier from --config's [nlp] section, with --model/--threads overriding."""
    from kefu.config import ConfigError, load
    from kefu.nlp.classifier import ConfigProblem, from_config
    from kefu.nlp.encoder import ModelError

    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"kefu: bad config\n{e}", file=sys.stderr)
        return None
    nlp = cfg.nlp
    if getattr(args, "model", None):
        nlp.model = args.model
    if getattr(args, "threads", None):
        nlp.threads = args.threads
    if getattr(args, "no_early_exit", False):
        nlp.early_exit = False
    try:
        return from_config(nlp)
    except (ModelError, ConfigProblem) as e:
        print(f"kefu nlp: {e}", file=sys.stderr)
        return None


def _cmd_classify(args: argparse.Namespace) -> int:
    clf = _classifier(args)
    if clf is None:
        return 2
    texts = args.text if args.text else [line.rstrip("\n") for line in sys.stdin if line.strip()]
    clf.classify_batch(["warm up", "a slightly longer message to warm the caches up"])
    for text in texts:
        p = clf.classify(text)
        if args.json:
            print(json.dumps({"text": text, **p.to_dict()}, ensure_ascii=False))
            continue
        flag = "  OUT OF SCOPE -> human" if p.out_of_scope else ""
        print(f"{text}\n  intent: {p.intent}  confidence: {p.confidence:.3f}{flag}\n"
              f"  sentiment: {p.sentiment} ({p.sentiment_score:+.2f})  time: {p.latency_ms:.2f} ms"
              + (f"  [{p.source}]" if p.source != "model" else "") + ("  [early exit]" if p.early_exit else ""))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from kefu.nlp import data as D

    try:
        rows = D.read_csv(args.file)
    except D.DataError as e:
        print(f"kefu nlp eval: {e}", file=sys.stderr)
        return 2
    clf = _classifier(args)
    if clf is None:
        return 2
    known = set(clf.intents) | {args.oos_label}
    unknown = sorted(set(rows.labels) - known)
    if unknown:
        print(f"kefu nlp eval: {args.file}: labels the model does not know (counted as wrong): "
              f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}", file=sys.stderr)
    clf.classify("warm up")
    preds, lat = [], []
    bar = D.Progress(len(rows), "classifying")
    for text in rows.texts:
        t = time.perf_counter()
        p = clf.classify(text)
        lat.append((time.perf_counter() - t) * 1000)
        preds.append(p)
        bar.update(1)
    bar.close()
    raw = [p.intent for p in preds]
    flagged = [args.oos_label if p.out_of_scope else p.intent for p in preds]
    ins = [i for i, y in enumerate(rows.labels) if y != args.oos_label]
    gold_in = [rows.labels[i] for i in ins]
    report = {
        "rows": len(rows),
        "accuracy": D.accuracy(gold_in, [raw[i] for i in ins]),
        "macro_f1": D.macro_f1(gold_in, [raw[i] for i in ins]),
        **D.oos_scores(rows.labels, flagged, args.oos_label),
        "flagged_out_of_scope": sum(p.out_of_scope for p in preds) / len(preds),
        "early_exit": sum(p.early_exit for p in preds) / len(preds) if clf.early_exit else None,
        "latency_ms": {q: D.percentile(lat, q) for q in (50, 90, 99)},
        "top_confusions": D.top_confusions(gold_in, [raw[i] for i in ins], args.top),
        "threads": clf.encoder.threads,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{args.file}: {len(rows)} rows ({report['in_scope']} in scope, {report['oos']} labelled {args.oos_label!r})")
    print(f"  accuracy (in-scope rows, best intent)   {100 * report['accuracy']:6.2f}%")
    print(f"  macro-F1                                {100 * report['macro_f1']:6.2f}%")
    print(f"  in-scope accuracy with the threshold    {100 * report['in_scope_accuracy']:6.2f}%")
    if report["oos"]:
        print(f"  out-of-scope recall                     {100 * report['oos_recall']:6.2f}%")
    print(f"  flagged out of scope (all rows)         {100 * report['flagged_out_of_scope']:6.2f}%")
    if report["early_exit"] is not None:
        print(f"  answered at the early exit (all rows)   {100 * report['early_exit']:6.2f}%")
    la = report["latency_ms"]
    print(f"  latency per message, {report['threads']} thread(s)       p50 {la[50]:.2f} ms  p90 {la[90]:.2f} ms  "
          f"p99 {la[99]:.2f} ms")
    if report["top_confusions"]:
        print("  top confusions (gold -> predicted: count):")
        for g, p, n in report["top_confusions"]:
            print(f"    {g} -> {p}: {n}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        from kefu.nlp.train import run
    except ImportError as e:  # numpy etc. are runtime deps; this is torch's absence surfacing early
        print(f"kefu nlp train: {e}; install the train extra: pip install 'kefu[train]'", file=sys.stderr)
        return 2
    args.argv = sys.argv[3:] if len(sys.argv) > 3 and sys.argv[1:3] == ["nlp", "train"] else [args.data]
    return run(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from kefu.nlp import data as D
    from kefu.nlp.train import CARD_OPTIONS, TrainError, export_checkpoint

    try:
        export_checkpoint(args.checkpoint, args.out, data=args.data,
                          **{k: getattr(args, k) for k in CARD_OPTIONS})
    except (TrainError, D.DataError, FileNotFoundError) as e:
        print(f"kefu nlp export: {e}", file=sys.stderr)
        return 2
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "nlp", help="intent model: classify, eval, train, export",
        description="The intent engine: classify messages, evaluate a model on a labelled CSV, "
        "fine-tune a model from a CSV and export it to int8 ONNX.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="nlp_command", metavar="COMMAND", required=True)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", "-c", metavar="FILE", help="read [nlp] from this config file")
        q.add_argument("--model", metavar="DIR", help="model folder (default: [nlp] model, else the shipped one)")
        q.add_argument("--threads", type=int, metavar="N", help="inference threads (default: [nlp] threads)")
        q.add_argument("--json", action="store_true", help="print JSON")
        q.add_argument("--no-early-exit", action="store_true",
                       help="run every layer for every message (default: [nlp] early_exit)")

    c = sub.add_parser("classify", help="classify messages",
                       description="Print intent, calibrated confidence, sentiment, the out-of-scope flag "
                       "and the time taken for each text (arguments, or lines on standard input).")
    c.add_argument("text", nargs="*", help="message text (default: read lines from standard input)")
    model_args(c)
    c.set_defaults(func=_cmd_classify)

    e = sub.add_parser("eval", help="score a model on a labelled CSV",
                       description="Classify every row of a text,category CSV one message at a time and print "
                       "accuracy, macro-F1, the top confusions, out-of-scope recall (rows labelled --oos-label) "
                       "and latency percentiles.")
    e.add_argument("file", metavar="FILE.csv")
    e.add_argument("--oos-label", default="oos", help="label of out-of-scope rows (default: oos)")
    e.add_argument("--top", type=int, default=5, help="confusions to list (default 5)")
    model_args(e)
    e.set_defaults(func=_cmd_eval)

    t = sub.add_parser("train", help="fine-tune a model from a CSV (needs the train extra)",
                       description="Fine-tune a BERT-family encoder on a labelled CSV, export it to int8 ONNX "
                       "and write a model folder with a model card. Needs pip install 'kefu[train]'.")
    from kefu.nlp.train import add_arguments

    add_arguments(t)
    t.set_defaults(func=_cmd_train)

    x = sub.add_parser("export", help="re-export a training checkpoint to int8 ONNX (needs the train extra)",
                       description="Export checkpoint.pt (written by train) to ONNX, quantise to int8, verify "
                       "against fp32 and recalibrate on the held-out split of the training CSV.")
    x.add_argument("checkpoint", metavar="CHECKPOINT.pt")
    x.add_argument("--out", metavar="DIR", required=True, help="model folder to write")
    x.add_argument("--data", metavar="FILE.csv", help="training CSV (default: the path recorded in the checkpoint)")
    x.add_argument("--oos-file", action="append", metavar="FILE", help="out-of-scope examples (CSV or one per line)")
    x.add_argument("--oos-recall", type=float, metavar="R",
                   help="out-of-scope threshold by recall on the examples (default: what the checkpoint recorded)")
    x.add_argument("--knn-weight", type=float, metavar="W",
                   help="weight of the nearest training examples' vote (default: what the checkpoint recorded)")
    x.add_argument("--knn-k", type=int, metavar="K", help="nearest training examples that vote")
    x.add_argument("--knn-temperature", type=float, metavar="T", help="softness of their vote")
    for opt in ("--name", "--card-data", "--card-base", "--card-notes", "--card-command"):
        x.add_argument(opt, help="model card text (default: what the checkpoint recorded)")
    x.set_defaults(func=_cmd_export)
