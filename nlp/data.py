"""Labelled data and the numbers kefu reports about a model (no torch, no numpy-only tricks).

Used by training (`kefu nlp train`), evaluation (`kefu nlp eval`) and the benchmark, so
that all three read CSV files, split them and score predictions the same way.

The held-out split is stratified and seeded: for every label the rows are shuffled
with ``random.Random(f"{seed}:{label}")`` and the first ``ceil(n * fraction)`` become
held-out. The same file, fraction and seed always give the same split, whatever the
row order of the other labels.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

TEXT_COLUMNS = ("text", "utterance", "query", "sentence")
LABEL_COLUMNS = ("category", "label", "intent")
DEFAULT_SEED = 77
DEFAULT_HOLDOUT = 0.1


class DataError(Exception):
    """A data file that cannot be used; the message names the file and the line."""


@dataclass
class Labelled:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> "Labelled":
        return Labelled([self.texts[i] for i in idx], [self.labels[i] for i in idx])

    def without(self, label: str) -> tuple["Labelled", list[str]]:
        """(rows whose label is not ``label``, texts of rows whose label is)."""
        keep = [i for i, y in enumerate(self.labels) if y != label]
        other = [self.texts[i] for i, y in enumerate(self.labels) if y == label]
        return self.subset(keep), other


def read_csv(path: str | Path) -> Labelled:
    """A CSV with a header naming a text column and a label column."""
    p = Path(path)
    try:
        f = p.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{p}: empty file; expected a header such as text,category") from None
        except csv.Error as e:
            raise DataError(f"{p}:1: not valid CSV: {e}") from None
        ti = next((header.index(c) for c in TEXT_COLUMNS if c in header), None)
        li = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
        if ti is None or li is None:
            raise DataError(
                f"{p}:1: header {','.join(header)!r} needs a text column ({'/'.join(TEXT_COLUMNS)}) "
                f"and a label column ({'/'.join(LABEL_COLUMNS)})"
            )
        texts, labels = [], []
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(ti, li):
                    raise DataError(f"{p}:{line}: expected {len(header)} columns, got {len(row)}")
                text, label = row[ti].strip(), row[li].strip()
                if not text or not label:
                    raise DataError(f"{p}:{line}: empty text or label")
                texts.append(text)
                labels.append(label)
        except csv.Error as e:
            raise DataError(f"{p}:{reader.line_num}: not valid CSV: {e}") from None
    if not texts:
        raise DataError(f"{p}: no rows after the header")
    return Labelled(texts, labels)


def write_csv(path: str | Path, data: Labelled) -> None:
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "category"])
        w.writerows(zip(data.texts, data.labels))


def read_clinc(path: str | Path, oos_label: str = "oos") -> dict[str, Labelled]:
    """CLINC150's data_full-style JSON: {"train": [[text, intent], ...], "oos_train": ...}."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    out = {}
    for split, rows in raw.items():
        out[split] = Labelled([r[0] for r in rows], [oos_label if split.startswith("oos") else r[1] for r in rows])
    return out


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK ideograph (Chinese, or kanji/hanja)."""
    return any("\u3400" <= c <= "\u9fff" or "\uf900" <= c <= "\ufaff" for c in text)


def stratified_split(data: Labelled, fraction: float = DEFAULT_HOLDOUT, seed: int = DEFAULT_SEED) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices); every label keeps at least one training row.

    Rows are stratified by label and by script: a label's Chinese (CJK) rows and its other
    rows are split separately, so a mixed Chinese and English CSV holds out both languages
    in proportion, and the rows without CJK are split exactly as in a CSV of them alone.
    """
    by_label: dict[str, list[int]] = {}
    for i, (y, text) in enumerate(zip(data.labels, data.texts)):
        by_label.setdefault(y + ("\0cjk" if has_cjk(text) else ""), []).append(i)
    train, held = [], []
    for key in sorted(by_label):
        idx = by_label[key]
        label, _, cjk = key.partition("\0")
        random.Random(f"{seed}:{label}" + (":cjk" if cjk else "")).shuffle(idx)
        k = min(math.ceil(len(idx) * fraction), len(idx) - 1) if fraction > 0 else 0
        held.extend(idx[:k])
        train.extend(idx[k:])
    return sorted(train), sorted(held)


# ---- scores -----------------------------------------------------------------


def accuracy(gold: list[str], pred: list[str]) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)


def macro_f1(gold: list[str], pred: list[str]) -> float:
    """Unweighted mean of per-label F1 over the labels present in ``gold``."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    labels = sorted(set(gold))
    f1s = []
    for y in labels:
        denom = 2 * tp[y] + fp[y] + fn[y]
        f1s.append(2 * tp[y] / denom if denom else 0.0)
    return sum(f1s) / max(len(f1s), 1)


def top_confusions(gold: list[str], pred: list[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The k most frequent (gold, predicted) mistakes."""
    c = Counter((g, p) for g, p in zip(gold, pred) if g != p)
    return [(g, p, n) for (g, p), n in c.most_common(k)]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0-100) of a non-empty list."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def oos_scores(gold: list[str], pred: list[str], oos_label: str) -> dict[str, float]:
    """In-scope accuracy (an in-scope row flagged out-of-scope counts as wrong) and OOS recall."""
    ins = [(g, p) for g, p in zip(gold, pred) if g != oos_label]
    oos = [p for g, p in zip(gold, pred) if g == oos_label]
    return {
        "in_scope_accuracy": sum(g == p for g, p in ins) / max(len(ins), 1),
        "oos_recall": sum(p == oos_label for p in oos) / len(oos) if oos else float("nan"),
        "in_scope": len(ins),
        "oos": len(oos),
    }


# ---- progress -----------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal; a line per 5% elsewhere (logs, pipes)."""

    def __init__(self, total: int, label: str, stream=None, width: int = 28) -> None:
        import sys
        import time

        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self.start = time.monotonic()
        self._clock = time.monotonic
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._last_draw = 0.0
        self.note = ""

    def update(self, n: int = 1, note: str = "") -> None:
        self.done = min(self.done + n, self.total)
        if note:
            self.note = note
        now = self._clock()
        if self._tty:
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self._last_draw = now
                self._draw(now, "\r")
        else:
            decile = self.done * 20 // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                self._draw(now, "")
                self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now: float, prefix: str) -> None:
        frac = self.done / self.total
        fill = int(frac * self.width)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * fill + "-" * (self.width - fill)
        self.stream.write(f"{prefix}{self.label} [{bar}] {self.done}/{self.total} "
                          f"{elapsed:5.0f}s eta {eta:4.0f}s {self.note}")

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
