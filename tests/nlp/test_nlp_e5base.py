"""The multilingual base's converter pieces that need no torch and no base weights:
4-bit dequantisation on hand-made blocks, and vocabulary trimming on a tiny unigram tokenizer
(the trimmed tokenizer gives kept texts the same pieces, renumbered)."""

import json

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from kefu.nlp import data as D
from kefu.nlp import e5base


def test_dequant_q4_follows_the_block_layout():
    # One block of 32 weights: fp16 scale 0.5, byte j holds weight j (low nibble) and j+16 (high).
    q = np.arange(32) % 16  # stored nibbles 0..15 mean -8..7
    packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    raw = np.concatenate([np.frombuffer(np.float16(0.5).tobytes(), np.uint8), packed])
    w = e5base.dequant_q4(raw, 32)
    assert w.tolist() == [(v - 8) * 0.5 for v in q.tolist()]
    two = e5base.dequant_q4(np.concatenate([raw, raw]), 64)
    assert two.tolist() == w.tolist() * 2


def _tiny_unigram() -> tuple[dict, Tokenizer]:
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0), ("我", -3.0),
             ("的", -3.0), ("卡", -3.0), ("丢", -4.0), ("了", -3.0), ("银行", -5.0), ("银", -7.0), ("行", -7.0),
             ("\u2581my", -4.0), ("\u2581card", -5.0), ("\u2581lost", -5.0), ("\u2581zebra", -9.0), ("猫", -8.0),
             ("\u2581", -2.0)][:-1]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return json.loads(tok.to_str()), tok


def test_trimmed_tokenizer_keeps_the_pieces_of_kept_texts():
    tok_json, full = _tiny_unigram()
    texts = ["我的银行卡丢了", "my card"]
    keep = e5base.choose_pieces(tok_json, texts, full, top_latin=0, top_cjk=0)
    assert keep[:4] == [0, 1, 2, 3]
    pieces = [tok_json["model"]["vocab"][i][0] for i in keep]
    assert "银行" in pieces and "\u2581my" in pieces and "\u2581card" in pieces
    assert "\u2581zebra" not in pieces and "\u2581lost" not in pieces  # unused multi-character pieces go
    assert "猫" in pieces  # single CJK characters stay for unseen text
    new = Tokenizer.from_str(json.dumps(e5base.trimmed_tokenizer(tok_json, keep, 16)))
    for text in texts:
        a, b = full.encode(text), new.encode(text)
        assert a.tokens == b.tokens
        assert b.ids == [keep.index(i) for i in a.ids]
    assert new.encode("zebra").tokens[1:-1] != full.encode("zebra").tokens[1:-1]  # falls back to pieces/unk


def test_split_by_label_and_script_keeps_the_english_rows_split():
    english = D.Labelled([f"question {i} about {y}" for y in "ab" for i in range(20)], [y for y in "ab" for _ in range(20)])
    chinese = D.Labelled([f"问题{i}关于{y}" for y in "ab" for i in range(10)], [y for y in "ab" for _ in range(10)])
    mixed = D.Labelled(english.texts + chinese.texts, english.labels + chinese.labels)
    _, held_en = D.stratified_split(english, 0.1, 77)
    _, held = D.stratified_split(mixed, 0.1, 77)
    assert [i for i in held if i < len(english.texts)] == held_en
    held_zh = [i for i in held if i >= len(english.texts)]
    assert len(held_zh) == 2 and {mixed.labels[i] for i in held_zh} == {"a", "b"}  # each label's Chinese rows too
