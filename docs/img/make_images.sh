#!/usr/bin/env bash
# Re-render docs/img/qgis_landsat7.png, the QGIS rendering shown in the README and docs/qgis.md:
# classify the real Landsat 7 scene of the shared data with scenetag, then open the GeoPackage in
# Debian's QGIS 3.22 (python3-qgis, headless) and render its default styles over the scene.
#
#     bash docs/img/make_images.sh            (MODEL=path.onnx to use another model)
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-model/default/scenetag-default.onnx}
SCENE=${SCENE:-../shared/data/scenes/landsat7_rgb_byte.tif}
OUT=${OUT:-out}
mkdir -p "$OUT"
.venv/bin/python cli.py run "$SCENE" -o "$OUT/landsat7.gpkg" --model "$MODEL" --overwrite --no-progress
QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py "$OUT/landsat7.gpkg" --scene "$SCENE" \
    --png docs/img/qgis_landsat7.png --legend --width 800 --strict > "$OUT/landsat7_qgis.json"
# A 256-colour palette keeps the PNG near 200 KB instead of 700 KB, with no visible loss.
.venv/bin/python -c "from PIL import Image; p = 'docs/img/qgis_landsat7.png'; \
Image.open(p).convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT).save(p, optimize=True)"
echo "wrote docs/img/qgis_landsat7.png (QGIS report: $OUT/landsat7_qgis.json)" >&2
