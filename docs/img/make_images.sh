#!/usr/bin/env bash
# Re-render docs/img/qgis_chips.png, the QGIS rendering shown in the README and docs/qgis.md:
# classify a real scene of the shared data with scenetag's default model, then open the
# GeoPackage in Debian's QGIS 3.22 (python3-qgis, headless) and render its stored default
# styles over the scene.
#
#     bash docs/img/make_images.sh     (MODEL=model.onnx SCENE=scene.tif OUT=folder to change)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-model/default/scenetag-default.onnx}
SCENE=${SCENE:-../shared/data/scenes/landsat8_rgb16.tif}
OUT=${OUT:-out}
PNG=docs/img/qgis_chips.png
name=$(basename "$SCENE" .tif)
mkdir -p "$OUT"
.venv/bin/python cli.py run "$SCENE" -o "$OUT/$name.gpkg" --model "$MODEL" --overwrite --no-progress
QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py "$OUT/$name.gpkg" --scene "$SCENE" \
    --png "$PNG" --legend --width 700 --strict > "$OUT/${name}_qgis.json"
# A 256-colour palette keeps the PNG near 200 KB instead of 700 KB, with no visible loss.
.venv/bin/python -c "from PIL import Image; p = '$PNG'; \
Image.open(p).convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT).save(p, optimize=True)"
echo "wrote $PNG (QGIS report: $OUT/${name}_qgis.json)" >&2
