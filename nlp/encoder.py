"""The run-time encoder: a kefu model folder loaded into onnxruntime + tokenizers.

A model folder (see ``kefu.nlp.export``) holds ``model.onnx`` (or ``front.onnx`` and
``back.onnx``, below), ``tokenizer.json`` and ``labels.json``. Loading checks every file
and fails with ``ModelError`` naming the file, what is wrong and the command that rebuilds
it: a missing or damaged model must stop start-up, never degrade into keyword matching.

Inference sorts a batch by token count and pads each run only to its own longest text
(tokenizer padding is switched off whatever tokenizer.json says: the shipped MiniLM
tokenizer pads to 128 tokens, 3-6 times slower). One intra-op thread is the default: on a
small, busy server a second thread mostly adds contention; the intent service gets its
parallelism from several worker threads sharing the sessions instead (``[nlp] workers``).

Early exit. A model trained with ``--exit-layer K`` ships as two graphs instead of
``model.onnx``: ``front.onnx`` (embeddings and layers 1..K, giving the hidden states and
the logits of an exit head on them) and ``back.onnx`` (layers K+1.. and the final head).
Every text runs the front; a text whose exit confidence (softmax of the exit logits at
the exit's own fitted temperature) reaches the exit threshold is answered there, the rest
continue through the back from the hidden states already computed, so nothing is paid
twice. The threshold is the lowest that keeps held-out accuracy and out-of-scope recall
within a small budget of the full model's (chosen at training time, see
``kefu.nlp.train``): most messages are easy and take half the layers, the hard and the
unfamiliar ones get all of them. ``run`` always gives the full model's answer;
``run_cascade`` is the fast path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .heads import Neighbours, softmax

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "banking77"
EXIT_FILES = ("front.onnx", "back.onnx")  # instead of model.onnx in an early-exit folder
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
    exit: "ExitInfo | None" = None
    neighbours: dict | None = None  # {"file", "temperature", "weight"}: see heads.Neighbours

    @property
    def graph_files(self) -> tuple[str, ...]:
        return EXIT_FILES if self.exit else ("model.onnx",)

    @property
    def model_files(self) -> tuple[str, ...]:
        return self.graph_files + ((self.neighbours["file"],) if self.neighbours else ())


@dataclass
class ExitInfo:
    layer: int  # the exit head reads the output of this layer (1-based)
    temperature: float  # the exit head's own softmax temperature
    threshold: float  # exit confidence (0..1) at or above which a text stops early


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
    lp = folder / "labels.json"
    if not lp.exists() and not (folder / "model.onnx").exists() and not (folder / EXIT_FILES[0]).exists():
        _check_file(folder / "model.onnx", hint)  # no model at all: name the main file
    _check_file(lp, hint)
    try:
        meta = json.loads(lp.read_text(encoding="utf-8"))
        labels = meta["labels"]
        temperature = float(meta.get("temperature", 1.0))
        threshold = float(meta.get("oos_threshold", 0.0))
        max_length = int(meta.get("max_length", 64))
        oos_score = str(meta.get("oos_score", "confidence"))
        ex = meta.get("early_exit")
        exit_info = None if ex is None else ExitInfo(int(ex["layer"]), float(ex["temperature"]), float(ex["threshold"]))
        nb = meta.get("neighbours")
        if nb is not None:
            nb = {"file": str(nb["file"]), "temperature": float(nb["temperature"]), "weight": float(nb["weight"])}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ModelError(lp, f"not a kefu labels file ({type(e).__name__}: {e})", hint) from None
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) and x for x in labels)):
        raise ModelError(lp, "'labels' must be a non-empty list of names", hint)
    if len(set(labels)) != len(labels):
        raise ModelError(lp, "'labels' has duplicates", hint)
    if oos_score not in ("confidence", "energy"):
        raise ModelError(lp, f"oos_score must be \"confidence\" or \"energy\", not {oos_score!r}", hint)
    if temperature <= 0 or max_length < 2 or (oos_score == "confidence" and not 0 <= threshold <= 1):
        raise ModelError(lp, "temperature must be > 0, max_length >= 2, a confidence threshold 0..1", hint)
    if exit_info and (exit_info.layer < 1 or exit_info.temperature <= 0 or not 0 <= exit_info.threshold <= 1):
        raise ModelError(lp, "early_exit needs layer >= 1, temperature > 0 and a threshold 0..1", hint)
    if nb and (nb["temperature"] <= 0 or not 0 < nb["weight"] <= 1 or "/" in nb["file"] or "\\" in nb["file"]):
        raise ModelError(lp, "neighbours needs temperature > 0, a weight in (0, 1] and a plain file name", hint)
    info = ModelInfo(folder, labels, temperature, threshold, max_length, oos_score=oos_score, meta=meta,
                     exit=exit_info, neighbours=nb)
    for name in ("tokenizer.json",) + info.model_files:
        _check_file(folder / name, hint)
    return info


def _check_file(p: Path, hint: str) -> None:
    if not p.is_file():
        raise ModelError(p, "missing", hint)
    if p.stat().st_size == 0:
        raise ModelError(p, "empty file", hint)


class Encoder:
    """Tokenizer + ONNX session(s) for one model folder.

    Shared by the intent service's worker threads: onnxruntime sessions take concurrent
    ``run`` calls, and nothing here changes after loading (every call works on its own arrays).
    """

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
        width = None
        if self.info.exit:
            self.front = self._session(ort, opts, "front.onnx", ["input_ids", "attention_mask"],
                                       ["hidden", "exit_logits"], hint)
            self.session = self._session(ort, opts, "back.onnx", ["hidden", "attention_mask"],
                                         ["logits", "embedding"], hint)
            width = self.front.get_outputs()[1].shape[-1]
        else:
            self.front = None
            self.session = self._session(ort, opts, "model.onnx", ["input_ids", "attention_mask"],
                                         ["logits", "embedding"], hint)
        outs = {o.name: o for o in self.session.get_outputs()}
        for w in (outs["logits"].shape[-1], width):
            if isinstance(w, int) and w != len(self.info.labels):
                raise ModelError(self.info.folder / "labels.json",
                                 f"{len(self.info.labels)} labels but the model has {w} outputs", hint)
        self.embedding_dim = outs["embedding"].shape[-1]
        self.neighbours = self._neighbours(ort, opts, hint) if self.info.neighbours else None
        # One tiny run now, so a model that loads but cannot execute fails at start-up.
        try:
            _, emb = self.run(["ok"])
            if self.front is not None:
                self.run_cascade(["ok"])
            if self.neighbours is not None:
                self.neighbours.vote(emb)
        except Exception as e:
            raise ModelError(self.info.folder / self.info.graph_files[0],
                             f"loads but fails to run ({str(e)[:300]})", hint) from None

    def _session(self, ort, opts, name: str, inputs: list[str], outputs: list[str], hint: str):
        mp = self.info.folder / name
        try:
            sess = ort.InferenceSession(str(mp), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors are not a public hierarchy
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(mp, f"onnxruntime cannot load it ({first[:300]})", hint) from None
        ins = {i.name for i in sess.get_inputs()}
        outs = {o.name for o in sess.get_outputs()}
        if set(inputs) - ins or set(outputs) - outs:
            raise ModelError(mp, f"expected inputs {'/'.join(inputs)} and outputs {'/'.join(outputs)}, "
                                 f"found {sorted(ins)} -> {sorted(outs)}", hint)
        return sess

    def _neighbours(self, ort, opts, hint: str):
        nb = self.info.neighbours
        sess = self._session(ort, opts, nb["file"], ["embedding"], ["neighbour_cosine", "neighbour_labels"], hint)
        return Neighbours(lambda emb: sess.run(None, {"embedding": emb}), len(self.info.labels),
                          nb["temperature"], nb["weight"])

    @property
    def labels(self) -> list[str]:
        return self.info.labels

    @property
    def has_exit(self) -> bool:
        return self.front is not None

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        # One text at a time in this thread: encode_batch's own thread pool only fights
        # onnxruntime for the same cores, and tokenizing is ~3% of the work.
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"expected text (str), got {type(t).__name__}")
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

    def _runs(self, ids: list[list[int]], max_batch: int):
        """(row indices, padded ids, mask) per length-homogeneous run."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for idx in self.chunks([len(x) for x in ids], order, max_batch):
            width = len(ids[idx[-1]])
            arr = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                k = len(ids[i])
                arr[r, :k] = ids[i]
                mask[r, :k] = 1
            yield idx, arr, mask

    def run_all(self, texts: list[str], max_batch: int = 64) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(exit logits or None, logits, embeddings): every layer for every text."""
        ids = self.tokenize(texts)
        n = len(ids)
        logits = np.empty((n, len(self.labels)), dtype=np.float32)
        early = np.empty_like(logits) if self.front is not None else None
        embs = None
        for idx, arr, mask in self._runs(ids, max_batch):
            if self.front is not None:
                hidden, ex = self.front.run(None, {"input_ids": arr, "attention_mask": mask})
                early[idx] = ex
                lo, em = self.session.run(None, {"hidden": hidden, "attention_mask": mask})
            else:
                lo, em = self.session.run(None, {"input_ids": arr, "attention_mask": mask})
            if embs is None:
                embs = np.empty((n, em.shape[1]), dtype=np.float32)
            logits[idx] = lo
            embs[idx] = em
        if embs is None:
            embs = np.empty((0, 0), dtype=np.float32)
        return early, logits, embs

    def run(self, texts: list[str], max_batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(logits [n, labels], embeddings [n, hidden]) of the full model, in the order of ``texts``."""
        _, logits, embs = self.run_all(texts, max_batch)
        return logits, embs

    def run_cascade(self, texts: list[str], threshold: float | None = None,
                    max_batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logits, exited, embeddings): texts confident at the exit stop there, the rest run every layer.

        An exited row's logits are the exit head's, rescaled so that dividing by the final
        head's temperature gives exit_logits / exit temperature: one softmax serves both; its
        embedding row is zero (the upper layers never ran). Without an exit (or with
        ``threshold`` above 1) this is ``run``.
        """
        ex = self.info.exit
        if self.front is None:
            logits, embs = self.run(texts, max_batch)
            return logits, np.zeros(len(texts), dtype=bool), embs
        th = ex.threshold if threshold is None else threshold
        scale = self.info.temperature / ex.temperature
        ids = self.tokenize(texts)
        n = len(ids)
        logits = np.empty((n, len(self.labels)), dtype=np.float32)
        exited = np.zeros(n, dtype=bool)
        embs = None  # only rows that reach the back get one; allocated at its first run
        for idx, arr, mask in self._runs(ids, max_batch):
            hidden, early = self.front.run(None, {"input_ids": arr, "attention_mask": mask})
            stop = softmax(early / ex.temperature).max(axis=1) >= th
            idx = np.asarray(idx)
            logits[idx[stop]] = early[stop] * scale
            exited[idx[stop]] = True
            rest = ~stop
            if rest.any():
                if stop.any():
                    hidden, mask = hidden[rest], mask[rest]
                lo, em = self.session.run(None, {"hidden": hidden, "attention_mask": mask})
                logits[idx[rest]] = lo
                if embs is None:
                    embs = np.zeros((n, em.shape[1]), dtype=np.float32)
                embs[idx[rest]] = em
        if embs is None:
            dim = self.embedding_dim if isinstance(self.embedding_dim, int) else 0
            embs = np.zeros((n, dim), dtype=np.float32)
        return logits, exited, embs
