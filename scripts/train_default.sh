#!/usr/bin/env bash
# Reproduce the default model, model/default/scenetag-default.onnx, in one command:
#
#     bash scripts/train_default.sh [WORKDIR]        (default WORKDIR: out/default)
#
# train -> calibrate (per-class F2 thresholds on the validation split, kept only where
# cross-fitting says they beat the global one) -> export (ONNX, verified against torch on
# random and real chips) -> tags study (TTA x weather structure x thresholds on the
# validation split; writes the chosen d4 TTA, structure and threshold into the spec) -> evaluate.  Needs the Planet chips
# at ../shared/data/chips/planet_amazon and the [torch] extra.  CPU only; about 35 min
# on 2 free cores (10 epochs at ~5 chips/s), longer on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA=${SCENETAG_CHIPS:-../shared/data/chips/planet_amazon}
WORK=${1:-out/default}
OUT=model/default/scenetag-default.onnx
# --device cpu: the default model is made on the CPU (the commands default to a GPU when present).
# glibc: keep freed blocks instead of returning them to the OS; doubles eager torch throughput here.
export MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184

"$PY" cli.py -v train "$DATA/images" --labels "$DATA/labels.csv" -d "$WORK" --resume \
    --name scenetag-planet-lite0 --arch tf_efficientnet_lite0 --loss bce \
    --epochs 10 --patience 3 --lr 1e-3 --batch-size 32 --seed 0 --val-fraction 0.2 \
    --chip-size 256 --resolution-m 3.0 --threads 2 --no-progress --device cpu

"$PY" cli.py -v calibrate "$WORK/best.pt" "$DATA/images" --labels "$DATA/labels.csv" --split val \
    --metric f2 --min-support 5 --global-threshold 0.2 -o "$WORK/calibrated.pt" --overwrite --device cpu \
    > "$WORK/calibration.json"

"$PY" cli.py -v export "$WORK/calibrated.pt" -o "$OUT" --overwrite \
    --check-chips "$DATA/images" --n-check 32 > "$WORK/export.json"

"$PY" scripts/tags_study.py probs "$OUT" -o "$WORK/tags_study"
"$PY" scripts/tags_study.py table -o "$WORK/tags_study" > "$WORK/tags_study/table.md"
"$PY" scripts/tags_study.py ship "$OUT" -o "$WORK/tags_study"

"$PY" cli.py evaluate "$OUT" "$DATA/images" --labels "$DATA/labels.csv" --split val \
    -o "$WORK/eval_val.json" --overwrite --device cpu

# The INT8 copy that --precision auto runs where OpenVINO does (the CPU); quantize refuses to
# write one outside the accuracy bar (model/default/MODEL_CARD_INT8.md).
INT8="$(dirname "$OUT")/scenetag-default-int8.onnx"
"$PY" cli.py quantize "$OUT" --chips "$DATA/images" --labels "$DATA/labels.csv" -o "$INT8" \
    --recipe keep-ends-bc --overwrite
mv "${INT8%.onnx}.md" "$(dirname "$OUT")/MODEL_CARD_INT8.md"
