"""Comparing model outputs without assuming one CPU's int8 kernels.

The models are dynamically quantised to int8. onnxruntime picks its integer kernels by
CPU (VNNI, AVX-512, plain AVX2 with 16-bit intermediate sums), and dynamic quantisation
scales activations per run, so the same text in a different batch, or on another x86-64
CPU, gets logits that differ in the second or third decimal. A decision can only move
where two labels are nearly tied. So the tests compare in two ways:

- what must be equal by construction (the same run, read two ways) exactly;
- what comes from different runs (another batch, single messages, the early exit against
  the full model) by decision, allowing a different choice only where both runs score the
  two labels within ``NEAR_TIE`` of each other, and by probability within a tolerance.
"""

from __future__ import annotations

import numpy as np

from kefu.nlp.classifier import IntentClassifier

NEAR_TIE = 0.05  # probability: two labels closer than this may swap places on another CPU


def final_probs(clf: IntentClassifier, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [texts, labels], exited [texts]) as ``clf.classify_batch(texts)`` scores
    the model's intents in one run: the early exit where on, then the neighbours' vote."""
    enc = clf.encoder
    if clf.early_exit:
        logits, exited, emb = enc.run_cascade(texts, clf.early_exit_threshold)
    else:
        logits, emb = enc.run(texts)
        exited = np.zeros(len(texts), dtype=bool)
    probs = clf.head(logits).probs.copy()
    if clf.neighbours is not None and not exited.all():
        rows = np.flatnonzero(~exited)
        probs[rows] = clf.neighbours.mix(probs[rows], emb[rows])
    return probs, exited


def single_probs(clf: IntentClassifier, texts: list[str]) -> np.ndarray:
    """``final_probs`` of each text run on its own."""
    return np.concatenate([final_probs(clf, [t])[0] for t in texts])


def disagreements(a: np.ndarray, b: np.ndarray, tie: float = NEAR_TIE) -> list[tuple[int, int, int]]:
    """Rows (row, a's choice, b's choice) where two runs' probability rows choose differently
    although the choices are not a near tie in both runs."""
    ia, ib = a.argmax(axis=1), b.argmax(axis=1)
    out = []
    for r in np.flatnonzero(ia != ib):
        i, j = int(ia[r]), int(ib[r])
        if a[r, i] - a[r, j] > tie or b[r, j] - b[r, i] > tie:
            out.append((int(r), i, j))
    return out


def assert_same_decisions(a: np.ndarray, b: np.ndarray, labels: list[str] | None = None,
                          texts: list[str] | None = None, tie: float = NEAR_TIE) -> None:
    bad = disagreements(a, b, tie)
    if bad:
        name = (lambda k: labels[k]) if labels else str
        lines = [f"{texts[r] if texts else r!r}: {name(i)} {a[r, i]:.3f}/{a[r, j]:.3f} vs "
                 f"{name(j)} {b[r, j]:.3f}/{b[r, i]:.3f}" for r, i, j in bad]
        raise AssertionError("decisions differ beyond a near tie:\n" + "\n".join(lines))


def assert_predictions_follow(clf: IntentClassifier, texts: list[str], preds) -> np.ndarray:
    """``preds`` (from ``clf.classify_batch(texts)``) are the argmax of ``final_probs`` of the
    same batch: the same run, so exactly equal. Returns the probabilities."""
    probs, exited = final_probs(clf, texts)
    assert [p.intent for p in preds] == [clf.head.labels[i] for i in probs.argmax(axis=1)]
    assert [p.early_exit for p in preds] == exited.tolist()
    return probs
