"""Remote-scene benchmark: one scene over loopback HTTP against the same scene on local disk.

    python bench/bench_remote.py [--repeat 4] [--rounds 3] [--model default|tiny]

Builds a real-derived tiled scene (the real Landsat 8 scene of the shared data,
uint16 RGB, repeated ``repeat`` x ``repeat`` times, tiled 256, DEFLATE:
:func:`bench.scenes.repeat_scene`), serves it with the tests' HTTP server
(Range support, counts what it sends; ``tests/remote_fixtures.py``, its own
process) and classifies it with ``run``'s path (:func:`jobs.runner.run_scene`)
from disk and from ``http://127.0.0.1``, alternately, ``rounds`` times each (a new URL query each round,
so that GDAL's cache of what it fetched does not serve a later round).
Prints chips/s of each (best round), the ratio remote/local, and the bytes
and requests the server served per classified chip.  The tiny model (64-pixel
chips) by default, so that reading, not inference, is what is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scenes import CACHE, DATA, bench_model, repeat_scene  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", choices=["tiny", "default"], default="tiny")
    args = parser.parse_args(argv)

    from scenetag.jobs.options import RunOptions
    from scenetag.jobs.runner import run_scene
    from scenetag.model.backends import create_predictor
    from tests.remote_fixtures import scene_server

    src = DATA / "scenes" / "landsat8_rgb16.tif"
    if not src.exists():
        print(f"the real scene {src} is absent: lay the shared data beside the project", file=sys.stderr)
        return 2
    folder = CACHE / "remote"
    folder.mkdir(parents=True, exist_ok=True)
    scene = folder / f"landsat8_x{args.repeat}.tif"
    if not scene.exists():
        repeat_scene(src, scene, args.repeat)
    model, described = bench_model(64, 60.0, tiny=args.model == "tiny")
    predictor = create_predictor(model)
    size = scene.stat().st_size
    print(f"scene: {scene.name} ({size / 1e6:.1f} MB), model: {described}")
    best = {"local": 0.0, "http": 0.0}
    served = None
    with scene_server(folder) as server, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in ("local", "http"):
                # A new query each round: GDAL caches what it fetched per URL, and each round must fetch.
                location = str(scene) if mode == "local" else f"{server.url(scene.name)}?round={r}"
                server.reset()
                t0 = time.perf_counter()
                result = run_scene(location, str(Path(tmp) / f"{mode}{r}.gpkg"), predictor, RunOptions())
                seconds = time.perf_counter() - t0
                rate = result.n_chips_classified / seconds
                best[mode] = max(best[mode], rate)
                if mode == "http":
                    served = server.served
                print(f"round {r + 1} {mode:<5} {result.n_chips_classified} chips in {seconds:.2f} s: {rate:.1f} chips/s")
        n = result.n_chips_classified
    ratio = best["http"] / best["local"]
    print(f"best: local {best['local']:.1f} chips/s, http {best['http']:.1f} chips/s, ratio {ratio:.2f} "
          f"(target >= 0.8)")
    print(f"http: {served.bytes / n / 1e3:.1f} kB/chip ({served.bytes / size:.2f} x the file), "
          f"{served.requests / n:.3f} requests/chip ({served.requests} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
