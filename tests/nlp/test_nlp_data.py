"""CSV reading, the seeded stratified split and the scores kefu reports."""

from __future__ import annotations

import io

import pytest

from kefu.nlp import data as D


def _csv(tmp_path, text: str):
    f = tmp_path / "d.csv"
    f.write_text(text, encoding="utf-8")
    return f


def test_reads_text_and_label_columns_in_any_order(tmp_path):
    rows = D.read_csv(_csv(tmp_path, "\ufeffIntent,Text\nx,\"hello, world\"\ny,你好\n\n"))
    assert rows.texts == ["hello, world", "你好"] and rows.labels == ["x", "y"]


@pytest.mark.parametrize("content,where", [
    ("", "d.csv: empty file"),
    ("words,stuff\na,b\n", "d.csv:1: header"),
    ("text,category\nhello\n", "d.csv:2: expected 2 columns"),
    ("text,category\nhello,\n", "d.csv:2: empty text or label"),
    ("text,category\n", "d.csv: no rows"),
])
def test_bad_csv_names_file_and_line(tmp_path, content, where):
    with pytest.raises(D.DataError) as e:
        D.read_csv(_csv(tmp_path, content))
    assert where in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(D.DataError, match="cannot read"):
        D.read_csv(tmp_path / "nope.csv")


def test_split_is_stratified_seeded_and_order_independent():
    texts = [f"t{i}" for i in range(300)]
    labels = ["a"] * 200 + ["b"] * 90 + ["c"] * 10
    data = D.Labelled(texts, labels)
    tr, ho = D.stratified_split(data, 0.1, seed=77)
    held = [labels[i] for i in ho]
    assert (held.count("a"), held.count("b"), held.count("c")) == (20, 9, 1)
    assert sorted(tr + ho) == list(range(300))
    assert D.stratified_split(data, 0.1, seed=77) == (tr, ho)
    assert D.stratified_split(data, 0.1, seed=78)[1] != ho
    # Moving other labels' rows around does not change which texts of a label are held out.
    moved = D.Labelled(texts[200:] + texts[:200], labels[200:] + labels[:200])
    _, ho_moved = D.stratified_split(moved, 0.1, seed=77)
    assert sorted(moved.texts[i] for i in ho_moved) == sorted(texts[i] for i in ho)


def test_split_keeps_a_training_row_for_tiny_labels():
    data = D.Labelled(["a", "b", "c"], ["x", "y", "y"])
    tr, ho = D.stratified_split(data, 0.5, seed=1)
    assert [data.labels[i] for i in tr].count("x") == 1


def test_scores():
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    assert D.accuracy(gold, pred) == pytest.approx(0.6)
    # F1: a = 2*1/(2+1+1) = 0.5, b = 2*2/(4+1+0) = 0.8, c = 0
    assert D.macro_f1(gold, pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert D.top_confusions(gold, pred, 1)[0][2] == 1
    assert D.percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    s = D.oos_scores(["a", "oos", "oos", "b"], ["a", "oos", "a", "oos"], "oos")
    assert (s["in_scope_accuracy"], s["oos_recall"]) == (0.5, 0.5)


def test_progress_writes_lines_when_not_a_terminal():
    out = io.StringIO()
    bar = D.Progress(40, "work", stream=out)
    for _ in range(40):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 21 and lines[-1].startswith("work [") and "40/40" in lines[-1]
