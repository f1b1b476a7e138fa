"""Classifier heads on top of the encoder's outputs (numpy only; no torch at run time).

- ``IntentHead``: the trained head. Softmax over ``logits / temperature``; the temperature
  is fitted on held-out data at training time (minimum negative log-likelihood), so the
  confidence reads as a probability and one out-of-scope threshold means the same thing
  for every label.
- ``FewShotHead``: intents defined in config by a handful of example phrases. At start-up
  the phrases are embedded with the shipped encoder (its L2-normalised ``embedding``
  output) and a multinomial logistic regression is fitted on them in a few hundred
  full-batch gradient steps (milliseconds). ``kind="prototype"`` uses cosine similarity
  to each intent's mean vector instead. Either way a message whose best cosine to any
  example of the chosen intent is below ``min_similarity`` does not match.

Out-of-scope detection thresholds one of two scores per message ("scope"): the calibrated
confidence, or the *energy* ``T * logsumexp(logits / T)``. Energy keeps the magnitude of the
logits that softmax throws away: an unfamiliar message tends to excite no label strongly,
even when one label still wins the softmax. On CLINC150 (held-out val) at 94% in-scope
accuracy, energy caught 91% of out-of-scope queries where the confidence caught 82%.
Training measures both on held-out data and records the better one in labels.json.

Also here: temperature fitting, calibration error and the out-of-scope threshold rule,
shared by training, ``kefu nlp eval`` and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return float((logz - z[np.arange(len(gold)), gold]).mean())


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The T > 0 minimising held-out NLL of softmax(logits / T): log grid, then refinement."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 80))
    best = min(grid, key=lambda t: nll(logits, gold, t))
    lo, hi = best / 1.2, best * 1.2
    for _ in range(40):  # golden-section on a unimodal neighbourhood
        a = hi - (hi - lo) / 1.618
        b = lo + (hi - lo) / 1.618
        if nll(logits, gold, a) < nll(logits, gold, b):
            hi = b
        else:
            lo = a
    return float((lo + hi) / 2)


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0, 1, bins + 1)
    err = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            err += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(err)


def energy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """T * logsumexp(logits / T) per row: higher means more in scope."""
    z = logits.astype(np.float64) / temperature
    m = z.max(axis=1)
    return temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


SCOPE_SCORES = ("confidence", "energy")


def choose_threshold(conf_in: np.ndarray, correct_in: np.ndarray, conf_oos: np.ndarray | None,
                     max_accuracy_drop: float = 0.02) -> dict:
    """The out-of-scope threshold on a scope score (calibrated confidence or energy).

    Rule: the highest threshold whose in-scope accuracy (a correct prediction above the
    threshold) is at most ``max_accuracy_drop`` below the accuracy with no threshold.
    A higher threshold only ever catches more out-of-scope messages, so this is the most
    out-of-scope recall the accuracy budget buys; with out-of-scope examples the recall
    at that threshold is reported too.
    """
    base = float(correct_in.mean())
    cands = np.unique(np.concatenate([conf_in, [0.0]]))
    best = 0.0
    for t in cands:  # ascending
        acc = float((correct_in & (conf_in >= t)).mean())
        if acc >= base - max_accuracy_drop - 1e-12:
            best = float(t)
        else:
            break
    acc = float((correct_in & (conf_in >= best)).mean())
    out = {"threshold": best, "in_scope_accuracy": acc, "accuracy_no_threshold": base}
    if conf_oos is not None and len(conf_oos):
        out["oos_recall"] = float((conf_oos < best).mean())
        out["oos_count"] = int(len(conf_oos))
    return out


def threshold_for_recall(conf_in: np.ndarray, correct_in: np.ndarray, conf_oos: np.ndarray,
                         recall: float) -> dict:
    """The out-of-scope threshold that flags ``recall`` of the out-of-scope examples.

    The alternative rule to ``choose_threshold`` when the requirement is stated as recall
    ("catch 85% of what we cannot answer"): the lowest threshold that flags at least that
    share of the examples, so it costs the least in-scope accuracy for it.
    """
    if not 0 < recall <= 1 or not len(conf_oos):
        raise ValueError("recall must be in (0, 1] and there must be out-of-scope examples")
    s = np.sort(conf_oos)
    k = int(np.ceil(recall * len(s) - 1e-9))  # examples to flag: those strictly below the threshold
    t = float(np.nextafter(s[k - 1], np.inf))
    return {"threshold": t, "in_scope_accuracy": float((correct_in & (conf_in >= t)).mean()),
            "accuracy_no_threshold": float(correct_in.mean()), "oos_recall": float((conf_oos < t).mean()),
            "oos_count": int(len(conf_oos))}


def choose_exit_threshold(exit_conf: np.ndarray, exit_correct: np.ndarray, final_correct: np.ndarray,
                          exit_conf_oos: np.ndarray | None = None, final_flags_oos: np.ndarray | None = None,
                          max_accuracy_drop: float = 0.003, max_recall_drop: float = 0.01) -> dict:
    """The early-exit threshold: the lowest exit confidence that costs almost nothing.

    A held-out row whose exit confidence reaches the threshold takes the exit head's
    answer, in scope; the others take the full model's. The rule scans thresholds from
    "nobody exits" downwards and keeps the lowest one such that it and every threshold
    above it keep held-out accuracy within ``max_accuracy_drop`` of the full model's and,
    with out-of-scope examples, their recall within ``max_recall_drop`` (an out-of-scope
    text that exits is a miss). Lower thresholds send more messages out early, so this is
    the most speed the budget buys.
    """
    n = len(exit_conf)
    base = float(final_correct.mean())
    oos = exit_conf_oos is not None and final_flags_oos is not None and len(exit_conf_oos) > 0
    base_recall = float(final_flags_oos.mean()) if oos else None
    cands = np.unique(np.concatenate([exit_conf, exit_conf_oos if oos else []]))[::-1]
    best, best_acc, best_recall = 1.0 + 1e-9, base, base_recall
    for t in cands:  # descending: more rows exit at every step
        stop = exit_conf >= t
        acc = float(np.where(stop, exit_correct, final_correct).mean())
        recall = float((final_flags_oos & (exit_conf_oos < t)).mean()) if oos else None
        if acc < base - max_accuracy_drop - 1e-12 or (oos and recall < base_recall - max_recall_drop - 1e-12):
            break
        best, best_acc, best_recall = float(t), acc, recall
    # 1.0 when nobody may exit: a softmax's top probability stays below 1 unless the logits
    # differ by hundreds, so in practice no message reaches it.
    best = min(best, 1.0)
    out = {"threshold": best, "accuracy": best_acc, "accuracy_full": base,
           "exit_rate": float((exit_conf >= best).mean()) if n else 0.0}
    if oos:
        out.update(oos_recall=best_recall, oos_recall_full=base_recall,
                   oos_exit_rate=float((exit_conf_oos >= best).mean()))
    return out


@dataclass
class HeadResult:
    index: np.ndarray  # best label index per row
    confidence: np.ndarray  # calibrated probability of that label
    probs: np.ndarray
    scope: np.ndarray | None = None  # the out-of-scope score; below the threshold: out of scope


class IntentHead:
    """The trained intent head: temperature-scaled softmax over the model's logits."""

    def __init__(self, labels: list[str], temperature: float = 1.0, oos_threshold: float = 0.0,
                 oos_score: str = "confidence") -> None:
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if oos_score not in SCOPE_SCORES:
            raise ValueError(f"oos_score must be one of {SCOPE_SCORES}, not {oos_score!r}")
        self.labels = list(labels)
        self.temperature = float(temperature)
        self.oos_threshold = float(oos_threshold)
        self.oos_score = oos_score

    def __call__(self, logits: np.ndarray) -> HeadResult:
        p = softmax(logits.astype(np.float64) / self.temperature)
        idx = p.argmax(axis=1)
        conf = p[np.arange(len(idx)), idx]
        scope = conf if self.oos_score == "confidence" else energy(logits, self.temperature)
        return HeadResult(idx, conf, p, scope)


class Neighbours:
    """Nearest training examples, mixed into the final head's probabilities.

    The fine-tuned model's sentence vectors of its own training rows are kept in an int8
    search graph (``neighbours.onnx``, see ``kefu.nlp.export.write_neighbours``); a message's
    ``k`` most similar rows vote for their labels, weighted by ``exp(cosine / temperature)``,
    and that vote is mixed in with ``weight``: ``p = (1 - weight) * p_model + weight *
    p_neighbours``. A small weight only moves close calls, where a near-duplicate training
    example is better evidence than the head's boundary: on BANKING77 it added about half a
    point of held-out accuracy (settings chosen on one half of the held-out rows and scored on
    the other, both ways). The scope score (out of scope or not) stays the model's own.
    ``search(emb)`` gives (cosines [rows, k], labels [rows, k]).
    """

    def __init__(self, search, n_labels: int, temperature: float = 0.02, weight: float = 0.1) -> None:
        if not (temperature > 0 and 0 < weight <= 1):
            raise ValueError("neighbours need temperature > 0 and 0 < weight <= 1")
        self.search = search
        self.n_labels = n_labels
        self.temperature = temperature
        self.weight = weight

    def vote(self, emb: np.ndarray) -> np.ndarray:
        """[rows, labels] probabilities from the k nearest training rows."""
        cos, lab = self.search(np.ascontiguousarray(emb, dtype=np.float32))
        s = cos.astype(np.float64)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / self.temperature)
        out = np.zeros((len(emb), self.n_labels))
        np.add.at(out, (np.repeat(np.arange(len(emb)), lab.shape[1]), lab.ravel()), w.ravel())
        return out / out.sum(axis=1, keepdims=True)

    def mix(self, probs: np.ndarray, emb: np.ndarray) -> np.ndarray:
        return (1.0 - self.weight) * probs + self.weight * self.vote(emb)


class FewShotHead:
    """Intents from example phrases, fitted at start-up on the encoder's embeddings."""

    def __init__(self, labels: list[str], examples: np.ndarray, example_labels: np.ndarray, *,
                 kind: str = "logistic", min_similarity: float = 0.5, steps: int = 300) -> None:
        if kind not in ("logistic", "prototype"):
            raise ValueError(f"few-shot head kind must be 'logistic' or 'prototype', not {kind!r}")
        if len(labels) < 1 or len(examples) == 0:
            raise ValueError("a few-shot head needs at least one intent with example phrases")
        self.labels = list(labels)
        self.kind = kind
        self.min_similarity = float(min_similarity)
        self.examples = examples.astype(np.float32)
        self.example_labels = example_labels.astype(np.int64)
        k = len(labels)
        protos = np.zeros((k, examples.shape[1]), dtype=np.float64)
        np.add.at(protos, self.example_labels, examples)
        protos /= np.linalg.norm(protos, axis=1, keepdims=True).clip(1e-9)
        self.prototypes = protos.astype(np.float32)
        if kind == "logistic" and k > 1:
            self.W, self.b = self._fit_logistic(examples.astype(np.float32), self.example_labels, k, steps)
        else:
            # Prototype scoring: cosine to each mean vector, sharpened.
            self.W, self.b = (self.prototypes.T.astype(np.float64) * 20.0), np.zeros(k)

    @staticmethod
    def _fit_logistic(x: np.ndarray, y: np.ndarray, k: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Full-batch gradient descent on L2-regularised softmax regression."""
        n, d = x.shape
        w = np.zeros((d, k), dtype=np.float32)
        b = np.zeros(k, dtype=np.float32)
        onehot = np.eye(k, dtype=np.float32)[y]
        lr, lam = 2.0, 1e-3
        for _ in range(steps):
            p = softmax(x @ w * 10.0 + b)
            g = (p - onehot) / n
            w -= lr * (10.0 * x.T @ g + lam * w)
            b -= lr * g.sum(0)
        return w * 10.0, b

    def __call__(self, embeddings: np.ndarray) -> tuple[HeadResult, np.ndarray]:
        """(head result, best cosine to an example of the chosen intent) per row."""
        e = embeddings.astype(np.float64)
        p = softmax(e @ self.W + self.b)
        idx = p.argmax(axis=1)
        sims = e @ self.examples.T.astype(np.float64)  # [rows, examples]
        best = np.full(len(idx), -1.0)
        for r, c in enumerate(idx):
            sel = self.example_labels == c
            best[r] = sims[r, sel].max()
        return HeadResult(idx, p[np.arange(len(idx)), idx], p), best
