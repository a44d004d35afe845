"""Cost of test-time augmentation: model-only chips/s of the default model for each ``--tta`` mode.

    python bench/bench_tta.py [--chips 32] [--repeats 3] [--device cpu] [--model M.onnx] [--json out.json]

Real Planet chips where ../shared/data has them, else random ones (the cost
does not depend on the pixels).  Each mode classifies the same chips in the
backend's batches; the best of ``--repeats`` is reported, with its ratio to
``none``.  Ratios within one run are what count on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def chips(n: int, size: int) -> tuple[np.ndarray, str]:
    images = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "chips" / "planet_amazon" / "images"
    if images.is_dir():
        from scenetag.model.training.data import load_images

        names = sorted(p.stem for p in images.iterdir())[:n]
        return load_images(images, names, size, on_wrong_size="resize"), "real Planet chips"
    return np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8), "random chips"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from scenetag.api import load_model
    from scenetag.model.tta import TTA_MODES

    import logging
    logging.getLogger("scenetag.model.backends.tta").setLevel(logging.ERROR)  # the "other TTA" warning
    first = load_model(args.model, backend=args.backend, device=args.device, tta="none")
    x, source = chips(args.chips, first.spec.chip_size)
    rows = {}
    for mode in TTA_MODES:
        predictor = load_model(args.model, backend=args.backend, device=args.device, tta=mode)
        bs = predictor.batch_size
        predictor.predict(x[:bs])  # warm up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), bs):
                predictor.predict(x[i:i + bs])
            best = min(best, time.perf_counter() - t0)
        rows[mode] = len(x) / best
    out = {"model": str(first.path), "device": first.device, "backend": type(first).__name__, "chips": len(x),
           "source": source, "batch_size": first.batch_size, "chips_per_s": rows,
           "relative": {m: rows[m] / rows["none"] for m in rows}}
    for mode, cps in rows.items():
        print(f"{mode:>6}: {cps:7.1f} chips/s  ({cps / rows['none']:.2f} x none)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
