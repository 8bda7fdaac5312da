"""Seconds per edit of the embedded tiny model on this machine's CPU (the `make serve` default).

    .venv/bin/python bench/tiny_edit.py [--runs 5] [--side 512] [--resolution 256]

Builds (or reuses) the tiny model in a temporary folder, warms up once, then times ``--runs``
edits of a ``--side`` x ``--side`` photo through ``EditEngine.run`` (decode, pipeline, PNG encode).
"""

import argparse
import io
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from serve_app.presets import build_registry
from serve_app.worker.engine import EditEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--resolution", type=int, default=256)
    args = ap.parse_args()
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(args.side, args.side, 3) * 255).astype("uint8")).save(buf, "PNG")
    preset = build_registry({"tiny": {"resolution": args.resolution}})["tiny"]
    engine = EditEngine(tempfile.mkdtemp(prefix="tiny-bench-"))
    t0 = time.perf_counter()
    engine.ensure(preset)
    build_load = time.perf_counter() - t0
    engine.run(preset, buf.getvalue(), "warm up", seed=0)
    times = []
    for i in range(args.runs):
        t = time.perf_counter()
        engine.run(preset, buf.getvalue(), "make the sky blue", seed=i)
        times.append(time.perf_counter() - t)
    print(f"tiny model build+load: {build_load:.2f}s")
    print(f"{args.side}x{args.side} input, working area {args.resolution}^2, {preset.steps} steps: "
          f"median {statistics.median(times):.3f}s, min {min(times):.3f}s, max {max(times):.3f}s over {args.runs} runs")


if __name__ == "__main__":
    main()
