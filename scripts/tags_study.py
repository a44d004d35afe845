"""Study for the default model's tagging: TTA x label structure x thresholds, on its validation split.

    python scripts/tags_study.py probs  [MODEL] [-o out/tags_study]   # validation probabilities per TTA mode
    python scripts/tags_study.py table  [-o out/tags_study]           # the markdown table (model card)

``probs`` scores the model (default: the shipped ONNX file) on the validation
chips of its training split (rebuilt from the seed in its spec) under each TTA
mode and saves them; ``table`` then compares, for each mode, with and without
Planet's weather structure: the global threshold 0.2, per-class thresholds in
sample (fitted and scored on the same chips: flattering), and cross-fitted
(10 x 2-fold: fitted on half, scored on the other half).  Only the
cross-fitted figures may be compared across rows.  Chips are read once per mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "chips" / "planet_amazon"


def probs(model: str | None, out: Path) -> None:
    from scenetag.api import load_model
    from scenetag.model.training.evaluation import load_eval_set, predict_all
    from scenetag.model.tta import TTA_MODES

    out.mkdir(parents=True, exist_ok=True)
    base = load_model(model, device="cpu", tta="none")
    table, images, source = load_eval_set(DATA / "images", DATA / "labels.csv", base.spec, "val",
                                          model_path=base.path)
    timing = {}
    arrays = {}
    for mode in TTA_MODES:
        predictor = load_model(model, device="cpu", tta=mode)
        t0 = time.perf_counter()
        arrays[mode] = predict_all(predictor, images)
        timing[mode] = len(images) / (time.perf_counter() - t0)
        print(f"{mode}: {timing[mode]:.1f} chips/s", file=sys.stderr)
    np.savez(out / "val_probs.npz", targets=table.targets, labels=np.asarray(base.spec.labels), **arrays)
    (out / "probs.json").write_text(json.dumps({"model": str(base.path), "sha256": base.sha256, "split": source,
                                                "n_images": len(table), "chips_per_s": timing}, indent=1))


def table(out: Path) -> None:
    from scenetag.model.structure import planet_structure
    from scenetag.model.training.calibrate import calibrate, crossfit
    from scenetag.model.training.metrics import evaluate

    d = np.load(out / "val_probs.npz")
    y, labels = d["targets"].astype(bool), [str(x) for x in d["labels"]]
    rows = []
    for mode in ("none", "flips", "d4"):
        p = d[mode]
        for structured in (False, True):
            s = planet_structure(labels) if structured else None
            g = evaluate(y, p, 0.2, labels, structure=s)
            cal = calibrate(y, p, "f2", 0.2, 5, structure=s, labels=labels)
            c = evaluate(y, p, cal.thresholds, labels, structure=s)
            cf = crossfit(y, p, "f2", 0.2, 5, structure=s, labels=labels)
            rows.append({"tta": mode, "structure": structured,
                         "f2_global": g["samples_f2"], "f2_in_sample": c["samples_f2"],
                         "f2_cross_global": cf["global"]["samples"], "f2_cross_cal": cf["calibrated"]["samples"],
                         "diff": cf["samples_diff"], "diff_sd": cf["samples_diff_sd"],
                         "macro_f1_sup_global": g["macro_f1_supported"], "macro_f1_sup_cal": c["macro_f1_supported"],
                         "weather_not_one_global": g["groups_not_one"].get("weather"),
                         "weather_not_one_cal": c["groups_not_one"].get("weather"),
                         "thresholds": dict(zip(labels, map(float, cal.thresholds))),
                         "reasons": dict(zip(labels, cal.reasons))})
    (out / "study.json").write_text(json.dumps(rows, indent=1))
    print("| TTA | structure | samples-F2 @0.2 | per-class, in-sample | cross-fitted @0.2 | cross-fitted per-class "
          "| per-class − global (cross-fitted) | macro-F1 (≥5 pos) @0.2 / per-class | chips without one weather tag "
          "@0.2 / per-class |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tta']} | {'weather + cloudy' if r['structure'] else 'none'} | {r['f2_global']:.4f} | "
              f"{r['f2_in_sample']:.4f} | {r['f2_cross_global']:.4f} | {r['f2_cross_cal']:.4f} | "
              f"{r['diff']:+.4f} ± {r['diff_sd']:.4f} | {r['macro_f1_sup_global']:.4f} / {r['macro_f1_sup_cal']:.4f} | "
              f"{r['weather_not_one_global']} / {r['weather_not_one_cal']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["probs", "table"])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("-o", "--out", type=Path, default=Path("out/tags_study"))
    args = ap.parse_args()
    probs(args.model, args.out) if args.step == "probs" else table(args.out)


if __name__ == "__main__":
    main()
