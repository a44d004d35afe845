"""Loss and threshold study on one split: BCE, weighted BCE, focal at two gammas, ASL.

    python scripts/loss_study.py run    OUT [--chip-size 128 --epochs 6 ...]
    python scripts/loss_study.py report OUT            # markdown table + study.json

Every run uses the same seeded split as the default model (seed 0, 20 %
validation) and the same training settings, and differs only in the loss.
The report scores each run's best-epoch validation probabilities at the
global threshold 0.2 and at per-class F2 thresholds calibrated on the same
validation images (in-sample, as `calibrate` does) and out-of-fold (2-fold
cross-fitting: thresholds fit on one half, scored on the other).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("SCENETAG_DATA") or ROOT.parent / "shared" / "data") / "chips" / "planet_amazon"

#: name -> TrainConfig overrides
RUNS = {
    "bce": dict(loss="bce"),
    "wbce-sqrt": dict(loss="wbce-sqrt"),
    "focal-g1": dict(loss="focal", focal_gamma=1.0, focal_alpha=None),
    "focal-g2": dict(loss="focal", focal_gamma=2.0, focal_alpha=None),
    "asl": dict(loss="asl", asl_gamma_neg=4.0, asl_gamma_pos=0.0, asl_clip=0.05),
    "wbce-inv": dict(loss="wbce-inv"),
}


def run(args) -> None:
    from scenetag.model.spec import PLANET_LABELS
    from scenetag.model.training.train import TrainConfig, train

    out = Path(args.out)
    for name in args.runs:
        if (out / name / "metrics.json").is_file() and json.loads((out / name / "metrics.json").read_text())["finished"]:
            logging.info("%s done already", name)
            continue
        cfg = TrainConfig(
            name=f"study-{name}", epochs=args.epochs, patience=args.patience, lr=args.lr,
            batch_size=args.batch_size, chip_size=args.chip_size, seed=0, val_fraction=0.2,
            on_wrong_size="resize" if args.chip_size != 256 else "refuse", threads=args.threads,
            labels=PLANET_LABELS, **RUNS[name],
        )
        logging.info("run %s: %s", name, RUNS[name])
        train(DATA / "images", DATA / "labels.csv", out / name, cfg, resume=True, progress=False)


def report(args) -> None:
    from scenetag.model.training.calibrate import calibrate, crossfit
    from scenetag.model.training.metrics import evaluate
    from scenetag.model.training.train import macro_ap

    out = Path(args.out)
    rows = []
    for name in RUNS:
        npz = out / name / "val_probs.npz"
        if not npz.is_file():
            continue
        d = np.load(npz)
        y, p, labels = d["targets"].astype(bool), d["probs"], [str(x) for x in d["labels"]]
        m = json.loads((out / name / "metrics.json").read_text())
        glob = evaluate(y, p, 0.2, labels)
        cal = calibrate(y, p, "f2", 0.2, 5)
        calr = evaluate(y, p, cal.thresholds, labels)
        cf = crossfit(y, p, "f2", 0.2, 5)
        cal1 = calibrate(y, p, "f1", 0.2, 5)
        cal1r = evaluate(y, p, cal1.thresholds, labels)
        rows.append({
            "run": name, "epochs_run": len(m["history"]), "best_epoch": m["best_epoch"] + 1,
            "map": macro_ap(y, p),
            "samples_f2_global": glob["samples_f2"], "samples_f2_cal": calr["samples_f2"],
            "samples_f2_cal_crossfit": cf["calibrated"]["samples"], "samples_f2_global_crossfit": cf["global"]["samples"],
            "macro_f1s_global": glob["macro_f1_supported"], "macro_f1s_cal_f1": cal1r["macro_f1_supported"],
            "chips_per_s": float(np.mean([h["train_chips_per_s"] for h in m["history"]])),
            "config": {k: m["config"][k] for k in ("chip_size", "epochs", "lr", "batch_size", "loss", "focal_gamma",
                                                  "focal_alpha", "asl_gamma_neg", "asl_clip")},
        })
    (out / "study.json").write_text(json.dumps(rows, indent=1))
    head = ("| loss | epochs (best) | val mAP | samples-F2 @0.2 | samples-F2 per-class F2 thr | "
            "same, out-of-fold | macro-F1 (≥5 pos) @0.2 | macro-F1 (≥5 pos) per-class F1 thr |")
    print(head)
    print("|" + "---|" * 8)
    for r in rows:
        print(f"| {r['run']} | {r['epochs_run']} ({r['best_epoch']}) | {r['map']:.3f} | {r['samples_f2_global']:.3f} | "
              f"{r['samples_f2_cal']:.3f} | {r['samples_f2_cal_crossfit']:.3f} (0.2: {r['samples_f2_global_crossfit']:.3f}) | "
              f"{r['macro_f1s_global']:.3f} | {r['macro_f1s_cal_f1']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out")
    r.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    r.add_argument("--chip-size", type=int, default=128)
    r.add_argument("--epochs", type=int, default=6)
    r.add_argument("--patience", type=int, default=3)
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("report")
    p.add_argument("out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    {"run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
