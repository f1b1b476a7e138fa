"""The run-time encoder: a kefu model folder loaded into onnxruntime + tokenizers.

A model folder (see ``kefu.nlp.export``) holds ``model.onnx``, ``tokenizer.json`` and
``labels.json``. Loading checks every file and fails with ``ModelError`` naming the file,
what is wrong and the command that rebuilds it: a missing or damaged model must stop
start-up, never degrade into keyword matching.

Inference sorts a batch by token count and pads each run only to its own longest text
(tokenizer padding is switched off whatever tokenizer.json says: the shipped MiniLM
tokenizer pads to 128 tokens, 3-6 times slower). One intra-op thread is the default: on a
small, busy server a second thread mostly adds contention.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "banking77"
REQUIRED_FILES = ("model.onnx", "tokenizer.json", "labels.json")
SHIPPED_REBUILD = (
    "reinstall kefu (pip install --force-reinstall kefu) or rebuild it with "
    "`kefu nlp train banking77/train.csv --out DIR` (see docs/nlp.md) and set [nlp] model = DIR"
)


class ModelError(Exception):
    """A model folder that cannot be used; the message names the file and how to rebuild it."""

    def __init__(self, path: Path, problem: str, rebuild: str) -> None:
        self.path = path
        self.problem = problem
        self.rebuild = rebuild
        super().__init__(f"intent model file {path}: {problem}. To rebuild: {rebuild}")


@dataclass
class ModelInfo:
    folder: Path
    labels: list[str]
    temperature: float
    oos_threshold: float
    max_length: int
    oos_score: str = "confidence"
    meta: dict = field(default_factory=dict)


def rebuild_hint(folder: Path) -> str:
    if folder.resolve() == DEFAULT_MODEL_DIR:
        return SHIPPED_REBUILD
    return (f"`kefu nlp export {folder / 'checkpoint.pt'} --out {folder}` if the training checkpoint is "
            f"there, otherwise `kefu nlp train YOUR.csv --out {folder}`")


def read_info(folder: str | Path | None = None) -> ModelInfo:
    """Check that a model folder is complete and read labels.json."""
    folder = Path(folder) if folder else DEFAULT_MODEL_DIR
    hint = rebuild_hint(folder)
    if not folder.is_dir():
        raise ModelError(folder, "no such folder", hint)
    for name in REQUIRED_FILES:
        p = folder / name
        if not p.is_file():
            raise ModelError(p, "missing", hint)
        if p.stat().st_size == 0:
            raise ModelError(p, "empty file", hint)
    lp = folder / "labels.json"
    try:
        meta = json.loads(lp.read_text(encoding="utf-8"))
        labels = meta["labels"]
        temperature = float(meta.get("temperature", 1.0))
        threshold = float(meta.get("oos_threshold", 0.0))
        max_length = int(meta.get("max_length", 64))
        oos_score = str(meta.get("oos_score", "confidence"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ModelError(lp, f"not a kefu labels file ({type(e).__name__}: {e})", hint) from None
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)):
        raise ModelError(lp, "'labels' must be a non-empty list of names", hint)
    if len(set(labels)) != len(labels):
        raise ModelError(lp, "'labels' has duplicates", hint)
    if oos_score not in ("confidence", "energy"):
        raise ModelError(lp, f"oos_score must be \"confidence\" or \"energy\", not {oos_score!r}", hint)
    if temperature <= 0 or max_length < 2 or (oos_score == "confidence" and not 0 <= threshold <= 1):
        raise ModelError(lp, "temperature must be > 0, max_length >= 2, a confidence threshold 0..1", hint)
    return ModelInfo(folder, labels, temperature, threshold, max_length, oos_score=oos_score, meta=meta)


class Encoder:
    """Tokenizer + ONNX session for one model folder. Not thread-safe: one worker uses it."""

    def __init__(self, folder: str | Path | None = None, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.info = read_info(folder)
        self.threads = threads
        hint = rebuild_hint(self.info.folder)
        tp = self.info.folder / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(tp))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ModelError(tp, f"cannot be loaded by tokenizers ({e})", hint) from None
        tok.no_padding()
        tok.enable_truncation(max_length=self.info.max_length)
        self.tokenizer = tok
        self.pad_id = 0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        mp = self.info.folder / "model.onnx"
        try:
            self.session = ort.InferenceSession(str(mp), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors are not a public hierarchy
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(mp, f"onnxruntime cannot load it ({first[:300]})", hint) from None
        outs = {o.name: o for o in self.session.get_outputs()}
        ins = {i.name for i in self.session.get_inputs()}
        if {"input_ids", "attention_mask"} - ins or {"logits", "embedding"} - set(outs):
            raise ModelError(mp, f"expected inputs input_ids/attention_mask and outputs logits/embedding, "
                                 f"found {sorted(ins)} -> {sorted(outs)}", hint)
        width = outs["logits"].shape[-1]
        if isinstance(width, int) and width != len(self.info.labels):
            raise ModelError(self.info.folder / "labels.json",
                             f"{len(self.info.labels)} labels but model.onnx has {width} outputs", hint)
        self.embedding_dim = outs["embedding"].shape[-1]
        # One tiny run now, so a model that loads but cannot execute fails at start-up.
        try:
            self.run(["ok"])
        except Exception as e:
            raise ModelError(mp, f"loads but fails to run ({str(e)[:300]})", hint) from None

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        # One text at a time in this thread: encode_batch's own thread pool only fights
        # onnxruntime for the same cores, and tokenizing is ~3% of the work.
        return [self.tokenizer.encode(t).ids for t in texts]

    @staticmethod
    def chunks(lengths: list[int], order: list[int], max_batch: int) -> list[list[int]]:
        """Cut length-sorted rows into runs padded to at most ~1.3x their shortest text.

        A batch pays for its longest text in every row; BANKING77's lengths run from 3 to
        64 tokens, so one padded batch of 32 mixed messages costs about as much as 32
        single runs. Runs of similar length keep the batching gain.
        """
        out: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            if cur and (len(cur) >= max_batch or lengths[i] > 1.3 * lengths[cur[0]] + 2):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def run(self, texts: list[str], max_batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(logits [n, labels], embeddings [n, hidden]) in the order of ``texts``."""
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"expected text (str), got {type(t).__name__}")
        ids = self.tokenize(texts)
        n = len(ids)
        order = sorted(range(n), key=lambda i: len(ids[i]))
        logits = np.empty((n, len(self.labels)), dtype=np.float32)
        embs = None
        for idx in self.chunks([len(x) for x in ids], order, max_batch):
            width = len(ids[idx[-1]])
            arr = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                k = len(ids[i])
                arr[r, :k] = ids[i]
                mask[r, :k] = 1
            lo, em = self.session.run(None, {"input_ids": arr, "attention_mask": mask})
            if embs is None:
                embs = np.empty((n, em.shape[1]), dtype=np.float32)
            logits[idx] = lo
            embs[idx] = em
        if embs is None:
            embs = np.empty((0, 0), dtype=np.float32)
        return logits, embs

    def timed_run(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
        t = time.perf_counter()
        lo, em = self.run(texts)
        return lo, em, (time.perf_counter() - t) * 1000.0
