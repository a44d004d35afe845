"""Eager torch on the CPU with glibc's default malloc thresholds, raised in-process, and raised by environment.

    python bench/bench_torch_malloc.py [--seconds 6] [--rounds 2]

Each variant runs in its own process (malloc settings are per process), the
default model's architecture (timm tf_efficientnet_lite0, random weights) at
256 px, batch 8, 2 threads; rounds are interleaved.  Prints chips/s and minor
page faults per chip.  Results: docs/performance.md, "Torch on the CPU".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import torch, timm
mode, seconds = sys.argv[1], float(sys.argv[2])
if mode == "mallopt":
    from scenetag.model.backends.glibc_malloc import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(2)
model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=17).eval()
x = torch.rand(8, 3, 256, 256)
with torch.inference_mode():
    for _ in range(2):
        model(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model(x)
        n += 8
    dt = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({"mode": mode, "chips_per_s": n / dt, "faults_per_chip": faults / n}))
"""

ENV_VALUE = "17179869184"


def run(mode: str, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if mode == "env":
        env.update(MALLOC_MMAP_THRESHOLD_=ENV_VALUE, MALLOC_TRIM_THRESHOLD_=ENV_VALUE)
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(seconds)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for mode in ("default", "mallopt", "env"):
            results.setdefault(mode, []).append(run(mode, args.seconds))
    base = sorted(r["chips_per_s"] for r in results["default"])[len(results["default"]) // 2]
    print(f"{'malloc':10s} {'chips/s (median)':>17s} {'vs default':>10s} {'faults/chip':>12s}")
    for mode, rs in results.items():
        rate = sorted(r["chips_per_s"] for r in rs)[len(rs) // 2]
        faults = sorted(r["faults_per_chip"] for r in rs)[len(rs) // 2]
        print(f"{mode:10s} {rate:17.1f} {rate / base:10.2f} {faults:12.0f}   "
              + " ".join(f"{r['chips_per_s']:.1f}" for r in rs))


if __name__ == "__main__":
    main()
