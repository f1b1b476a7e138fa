"""Export a trained classifier to ONNX, quantise it to int8 and write a kefu model folder.

Why these choices (measured on a 2-core development machine, all-MiniLM-L6-v2):
- The forward pass is exported with the TorchScript exporter from ``kefu.nlp.bert``'s
  eager attention, so onnxruntime's own graph optimiser fuses LayerNorm, GELU and the
  quantised MatMuls at session start; nothing hardware-specific is baked into the file.
- Dynamic int8 quantisation with *per-channel* weight scales keeps the pooled embedding
  within cosine 0.99 of fp32, where per-tensor scales fell to about 0.94. Word
  embeddings (Gather) are quantised too, which shrinks the file about four times.
- The quantised model is checked against the fp32 export on held-out text before it is
  written: mean cosine of the embeddings below ``MIN_COSINE`` is an error, not a warning.
  Before giving up, the export tries once more with each layer's feed-forward output
  projection (the MatMul after GELU, whose inputs have the widest range) left in fp32:
  multilingual-e5-small drifted to cosine 0.976 fully quantised and stayed at 0.9925 that
  way, for about 50% more file size. The log and the model card say which was written.

A model folder holds ``model.onnx`` (or, with an early exit, ``front.onnx`` and ``back.onnx``),
``tokenizer.json`` (truncation set, padding off),
``labels.json`` (labels, temperature, out-of-scope threshold, limits) and
``MODEL_CARD.md``. Only ``kefu.nlp.encoder`` reads it at run time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

MIN_COSINE = 0.99
FORMAT_VERSION = 1


def export_onnx(model, path: Path, opset: int = 17) -> None:
    """The torch model -> fp32 ONNX with dynamic batch and sequence axes."""
    import torch

    model.eval()
    top = model.cfg.vocab_size - 1  # any in-vocabulary ids trace the same graph
    ids = torch.tensor([[1, 2, 3, 4], [1, 5, 4, 0]], dtype=torch.long).clamp(max=top)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    dyn = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
           "logits": {0: "batch"}, "embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
            output_names=["logits", "embedding"], dynamic_axes=dyn, opset_version=opset, dynamo=False,
        )


def export_parts(model, front: Path, back: Path, opset: int = 17) -> None:
    """An early-exit model -> fp32 front (to the exit) and back (the rest) graphs."""
    import torch

    from .bert import BackPart, FrontPart

    model.eval()
    top = model.cfg.vocab_size - 1
    ids = torch.tensor([[1, 2, 3, 4], [1, 5, 4, 0]], dtype=torch.long).clamp(max=top)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.long)
    seq = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            FrontPart(model), (ids, mask), str(front), input_names=["input_ids", "attention_mask"],
            output_names=["hidden", "exit_logits"], opset_version=opset, dynamo=False,
            dynamic_axes={"input_ids": seq, "attention_mask": seq, "hidden": seq, "exit_logits": {0: "batch"}},
        )
        hidden = FrontPart(model)(ids, mask)[0]
        torch.onnx.export(
            BackPart(model), (hidden, mask), str(back), input_names=["hidden", "attention_mask"],
            output_names=["logits", "embedding"], opset_version=opset, dynamo=False,
            dynamic_axes={"hidden": seq, "attention_mask": seq, "logits": {0: "batch"}, "embedding": {0: "batch"}},
        )


def quantize(src: Path, dst: Path, keep_fp32: bool = False) -> None:
    """Dynamic int8 quantisation, per-channel weights (MatMul and the embedding Gather);
    ``keep_fp32``: leave the feed-forward output projections (``ffn_output_matmuls``) in fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gather"],
        extra_options={"MatMulConstBOnly": True},
        nodes_to_exclude=ffn_output_matmuls(src) if keep_fp32 else [],
    )


def ffn_output_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls of each layer's feed-forward output projection (``layer.N.output.dense``)."""
    import onnx

    graph = onnx.load(str(path)).graph
    return [n.name for n in graph.node
            if n.op_type == "MatMul" and "/output/dense/" in n.name and "/attention/" not in n.name]


def run_onnx(path: Path, tokenizer, texts: list[str], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) for texts, batched by length: used to verify and calibrate."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    enc = tokenizer.encode_batch(texts)
    order = sorted(range(len(texts)), key=lambda i: len(enc[i].ids))
    logits = [None] * len(texts)
    embs = [None] * len(texts)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        width = max(len(enc[i].ids) for i in idx)
        ids = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(idx):
            n = len(enc[i].ids)
            ids[r, :n] = enc[i].ids
            mask[r, :n] = 1
        lo, em = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        for r, i in enumerate(idx):
            logits[i], embs[i] = lo[r], em[r]
    return np.stack(logits), np.stack(embs)


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine between two output matrices."""
    na = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-9)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-9)
    cos = (na * nb).sum(1)
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def write_neighbours(vectors: np.ndarray, labels: np.ndarray, k: int, out: Path) -> None:
    """The nearest-training-examples search as an int8 ONNX graph (heads.Neighbours).

    embedding [batch, hidden] -> MatMul with the training vectors -> TopK(k) -> the cosine
    of each of the k nearest rows and their labels. In onnxruntime's int8 GEMM this costs a
    few hundredths of a millisecond, where numpy read 14 MB of float32 per call (about a
    millisecond) and its argpartition half as much again.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = min(k, len(labels))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["embedding", "vectors"], ["cosine"]),
            helper.make_node("TopK", ["cosine", "k"], ["neighbour_cosine", "index"], axis=-1),
            helper.make_node("Gather", ["labels", "index"], ["neighbour_labels"], axis=0),
        ],
        "kefu_neighbours",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", vectors.shape[1]])],
        [helper.make_tensor_value_info("neighbour_cosine", TensorProto.FLOAT, ["batch", k]),
         helper.make_tensor_value_info("neighbour_labels", TensorProto.INT64, ["batch", k])],
        [numpy_helper.from_array(np.ascontiguousarray(vectors.T, dtype=np.float32), "vectors"),
         numpy_helper.from_array(np.array([k], dtype=np.int64), "k"),
         numpy_helper.from_array(labels.astype(np.int64), "labels")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory(prefix="kefu-export-") as tmp:
        fp32 = Path(tmp) / "neighbours32.onnx"
        onnx.save(model, str(fp32))
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})


class QuantisationError(Exception):
    pass


def _checked(lf, ef, lq, eq, log) -> dict:
    check = {
        "embedding_cosine": compare(ef, eq),
        "logits_cosine": compare(lf, lq),
        "prediction_agreement": float((lf.argmax(1) == lq.argmax(1)).mean()),
        "texts": len(lf),
    }
    log(f"int8 vs fp32 on {len(lf)} held-out texts: embedding cosine mean "
        f"{check['embedding_cosine']['mean']:.4f} (min {check['embedding_cosine']['min']:.4f}), "
        f"same prediction {100 * check['prediction_agreement']:.2f}%")
    if check["embedding_cosine"]["mean"] < MIN_COSINE:
        raise QuantisationError(
            f"int8 model drifted from fp32: mean embedding cosine "
            f"{check['embedding_cosine']['mean']:.4f} < {MIN_COSINE}"
        )
    return check


def export_and_quantize_parts(model, tokenizer, texts: list[str], out: Path, run_folder, log=print) -> dict:
    """Early-exit model: fp32 full export for reference, int8 front/back written into ``out``.

    ``run_folder(folder, texts)`` gives (exit logits, logits, embeddings) for a folder
    holding front.onnx and back.onnx (the run-time encoder), so the check runs the very
    code that serves.
    """
    with tempfile.TemporaryDirectory(prefix="kefu-export-") as tmp:
        tmp = Path(tmp)
        log("exporting to ONNX (fp32): full model for reference, front and back parts")
        export_onnx(model, tmp / "fp32.onnx")
        export_parts(model, tmp / "front32.onnx", tmp / "back32.onnx")
        out.mkdir(parents=True, exist_ok=True)
        sample = texts[:2000]
        lf, ef = run_onnx(tmp / "fp32.onnx", tokenizer, sample)
        def both(keep: bool):
            quantize(tmp / "front32.onnx", out / "front.onnx", keep)
            quantize(tmp / "back32.onnx", out / "back.onnx", keep)
            return run_folder(out, sample)[1:]

        check = _quantise_checked("both parts", both, lf, ef, log)
        check["fp32_bytes"] = (tmp / "fp32.onnx").stat().st_size
        check["int8_bytes"] = (out / "front.onnx").stat().st_size + (out / "back.onnx").stat().st_size
    return check


def _quantise_checked(what: str, quantise_and_run, lf, ef, log) -> dict:
    """Quantise (``quantise_and_run(keep_ffn_output_fp32) -> (logits, embeddings)``) and
    check against the fp32 run; when full int8 drifts too far, once more with each
    layer's feed-forward output projection left in fp32. The check, or QuantisationError."""
    for keep in (False, True):
        log(f"quantising {what} to int8 (dynamic, per-channel"
            + (", feed-forward output projections left in fp32)" if keep else ")"))
        lq, eq = quantise_and_run(keep)
        try:
            check = _checked(lf, ef, lq, eq, log)
        except QuantisationError as e:
            if keep:
                raise
            log(f"{e}; trying again")
            continue
        check["ffn_output_fp32"] = keep
        return check
    raise AssertionError("unreachable")


def export_and_quantize(model, tokenizer, texts: list[str], out_onnx: Path, log=print) -> dict:
    """fp32 export, int8 quantisation and the cosine check; writes ``out_onnx`` (int8)."""
    with tempfile.TemporaryDirectory(prefix="kefu-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        int8 = Path(tmp) / "int8.onnx"
        log("exporting to ONNX (fp32)")
        export_onnx(model, fp32)
        sample = texts[:2000]
        lf, ef = run_onnx(fp32, tokenizer, sample)
        def one(keep: bool):
            quantize(fp32, int8, keep)
            return run_onnx(int8, tokenizer, sample)

        check = _quantise_checked("the model", one, lf, ef, log)
        out_onnx.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(int8, out_onnx)
        check["fp32_bytes"] = fp32.stat().st_size
        check["int8_bytes"] = out_onnx.stat().st_size
    return check


def write_labels(out: Path, labels: list[str], *, temperature: float, oos_threshold: float,
                 max_length: int, extra: dict) -> None:
    data = {
        "format": FORMAT_VERSION,
        "labels": labels,
        "temperature": temperature,
        "oos_threshold": oos_threshold,
        "max_length": max_length,
        **extra,
    }
    (out / "labels.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def write_model_card(out: Path, info: dict) -> None:
    """A Markdown model card: what it is, where its data and weights come from, what it scored."""
    m = info["metrics"]
    lines = [
        f"# kefu intent model: {info['name']}",
        "",
        "Intent classifier for kefu: a BERT-family encoder fine-tuned with a linear head on mean-pooled",
        "token vectors, exported to ONNX and quantised to int8 (dynamic, per-channel weights).",
        "Runs with onnxruntime and tokenizers only.",
        "",
        "## Files",
    ]
    if m.get("exit_layer"):
        lines += [
            f"- `front.onnx`: embeddings and layers 1-{m['exit_layer']}; inputs `input_ids`, `attention_mask` (int64,",
            "  [batch, seq]); outputs `hidden` [batch, seq, hidden] and `exit_logits` [batch, labels] (the early exit).",
            "- `back.onnx`: the remaining layers; inputs `hidden`, `attention_mask`; outputs `logits` [batch, labels]",
            "  and `embedding` [batch, hidden] (L2-normalised mean-pooled vector).",
        ]
    else:
        lines += [
            "- `model.onnx`: inputs `input_ids`, `attention_mask` (int64, [batch, seq]); outputs `logits`",
            "  [batch, labels] and `embedding` [batch, hidden] (L2-normalised mean-pooled vector).",
        ]
    lines += [
        "- `tokenizer.json`: truncation to `max_length` tokens, no padding (batches pad to their longest).",
        "- `labels.json`: label order, softmax temperature, out-of-scope score (`confidence` or `energy`,",
        "  T*logsumexp(logits/T)) and its threshold" + ("; the early exit's layer, temperature and threshold." if m.get("exit_layer") else "."),
        "",
        "## Provenance",
        f"- Training data: {info['data']}",
        f"- Base encoder: {info['base']}",
        f"- Training: {info['training']}",
        f"- Built with: `{info['command']}`",
        "",
        "## Measured",
        f"Held-out split: {info['split']}",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy (held-out, int8 ONNX, every layer) | {_pct(m['accuracy'])} |",
        *([f"| same, final head alone (without the nearest training examples' vote) | "
           f"{_pct(m['accuracy_head_alone'])} |"] if m.get("knn_weight") else []),
        f"| macro-F1 (held-out, int8 ONNX) | {_pct(m['macro_f1'])} |",
        f"| accuracy, torch fp32 before export (final head alone) | {_pct(m['accuracy_fp32'])} |",
        f"| int8 vs fp32 embedding cosine (mean / min) | {m['cosine_mean']:.4f} / {m['cosine_min']:.4f}"
        + (" (feed-forward output projections kept in fp32)" if m.get("ffn_output_fp32") else "") + " |",
        f"| softmax temperature (fitted on held-out NLL) | {m['temperature']:.3f} |",
        f"| expected calibration error before / after | {_pct(m['ece_raw'])} / {_pct(m['ece'])} |",
        f"| out-of-scope score / threshold | {m['oos_score']} / {m['oos_threshold']:.3f} |",
    ]
    if m.get("oos_recall") is not None:
        lines.append(f"| out-of-scope recall at the threshold ({m['oos_count']} examples) | {_pct(m['oos_recall'])} |")
    lines.append(f"| in-scope accuracy at the threshold | {_pct(m['in_scope_accuracy'])} |")
    if m.get("exit_layer"):
        lines += [
            f"| early exit after layer {m['exit_layer']}: accuracy of its head alone | {_pct(m['exit_accuracy_alone'])} |",
            f"| early exit: confidence threshold (temperature {m['exit_temperature']:.3f}) | {m['exit_threshold']:.3f} |",
            f"| held-out messages that stop at the exit | {_pct(m['exit_rate'])} |",
            f"| accuracy with early exit (as served) | {_pct(m['cascade_accuracy'])} |",
        ]
        if m.get("cascade_oos_recall") is not None:
            lines.append(f"| out-of-scope recall with early exit | {_pct(m['cascade_oos_recall'])} |")
    lines += ["", info.get("notes", "").strip(), ""]
    (out / "MODEL_CARD.md").write_text("\n".join(lines), encoding="utf-8")
