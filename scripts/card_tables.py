"""Print the model card's tables from a default-model work folder (see scripts/train_default.sh).

    python scripts/card_tables.py out/default

Reads metrics.json (training), calibration.json, export.json and val_probs.npz
(best-epoch validation probabilities) and prints markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(work: Path) -> None:
    from scenetag.model.training.metrics import evaluate

    metrics = json.loads((work / "metrics.json").read_text())
    cal = json.loads((work / "calibration.json").read_text())
    d = np.load(work / "val_probs.npz")
    y, p, labels = d["targets"].astype(bool), d["probs"], [str(x) for x in d["labels"]]
    thr = np.array([cal["thresholds"][lab] for lab in labels])
    g = evaluate(y, p, 0.2, labels)
    c = evaluate(y, p, thr, labels)
    print("## Training history\n")
    print("| epoch | train loss | val loss | val mAP | samples-F2 @0.2 | macro-F1 @0.2 (≥5 pos) | chips/s |")
    print("|---|---|---|---|---|---|---|")
    for h in metrics["history"]:
        best = " (best)" if h["epoch"] == metrics["best_epoch"] else ""
        print(f"| {h['epoch'] + 1}{best} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['val_map']:.4f} | "
              f"{h['val_samples_f2']:.4f} | {h['val_macro_f1_supported']:.4f} | {h['train_chips_per_s']:.1f} |")
    print("\n## Per class (validation split)\n")
    print("| label | train pos | val pos | threshold | why | P @0.2 | R @0.2 | F1 @0.2 | P cal | R cal | F1 cal | F2 cal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lab in labels:
        a, b = g["per_class"][lab], c["per_class"][lab]
        print(f"| {lab} | {metrics['train_positives'][lab]} | {a['support']} | {cal['thresholds'][lab]:.2f} | "
              f"{cal['reasons'][lab]} | {a['precision']:.3f} | {a['recall']:.3f} | {a['f1']:.3f} | "
              f"{b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} | {b['f2']:.3f} |")
    cf = cal["crossfit"]
    print("\n## Global 0.2 vs calibrated (validation split)\n")
    print("| metric | global 0.2 | calibrated (per-class F2) |")
    print("|---|---|---|")
    for key in ("samples_f2", "samples_f1", "micro_f1", "micro_f2", "macro_f1", "macro_f2", "macro_f1_supported"):
        name = key if key != "macro_f1_supported" else "macro_f1 over labels with ≥5 val positives"
        print(f"| {name} | {g[key]:.4f} | {c[key]:.4f} |")
    print(f"| samples_f2, out-of-fold ({cf['repeats']} x {cf['folds']}-fold) | {cf['global']['samples']:.4f} | "
          f"{cf['calibrated']['samples']:.4f} (sd of difference {cf['samples_diff_sd']:.4f}) |")
    print(f"| macro_f2, out-of-fold | {cf['global']['macro']:.4f} | {cf['calibrated']['macro']:.4f} |")
    print(f"\nsupported labels: {', '.join(c['supported_labels'])}")
    ex = work / "export.json"
    if ex.is_file():
        e = json.loads(ex.read_text())
        print(f"\nexport: opset {e['opset']}, max |p_torch - p_ort| random {e['max_diff_random']:.2e} "
              f"({e['n_random']} chips), real {e.get('max_diff_real', float('nan')):.2e} ({e.get('n_real', 0)} chips), "
              f"{e['bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/default"))
