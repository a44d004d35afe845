#!/usr/bin/env bash
# The packages the lent GPU machine's image lacks (its python3 is 3.12 and has torch,
# timm, numpy, pandas, pyarrow, attrs, and ONNX Runtime for the CPU), unpacked and
# packed as one xz tarball that fits the 64 MiB a device call carries (about 34 MiB):
# bench/_data/gpusite.tar.xz.  It also copies the 576 Planet chips bench_fleet_gpu.py's
# mosaic takes into bench/_data/chips (about 10 MB), since the device sees no ../shared.
# On the device: tar -xJf bench/_data/gpusite.tar.xz -C /tmp/site; PYTHONPATH=/tmp/site:.
# rasterio 1.4.3 and pyogrio 0.10 are the newest whose wheels fit (1.5.2 and 0.13 are
# 39 and 32 MB); both meet setup.cfg's floors.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/_data/gpusite.tar.xz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$work/wheels" rasterio==1.4.3 pyogrio==0.10.0 pyproj==3.7.1 'shapely>=2.1' 'geopandas>=1.0' \
  dask distributed tornado tblib zict partd locket affine cligj click-plugins colorcet
mkdir -p "$work/site" bench/_data
for w in "$work"/wheels/*.whl; do python -m zipfile -e "$w" "$work/site"; done
tar -C "$work/site" -cf - . | xz -9 -T0 > "$out.tmp"
mv "$out.tmp" "$out"
chips=bench/_data/chips
data=${SCENETAG_DATA:-../shared/data}
rm -rf "$chips" && mkdir -p "$chips"
ls "$data/chips/planet_amazon/images" | grep '\.jpg$' | LC_ALL=C sort | head -n 576 |
  while read -r name; do cp "$data/chips/planet_amazon/images/$name" "$chips/"; done
ls -l "$out"; du -sh "$chips"
