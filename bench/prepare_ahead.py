"""How much of a job's host work ``EditEngine.prepare`` takes off the generating path (CPU, tiny model).

    .venv/bin/python bench/prepare_ahead.py [--runs 7] [--side 1024] [--images 1]

A GPU worker with ``prepare_ahead`` runs ``prepare`` for the next job while the current one finishes
on the GPU; what remains on the path is ``generate`` given the prepared job. This measures, on the
embedded tiny model at a 1024x1024 working area, with ``--side`` x ``--side`` photo-like PNG uploads:
the median of ``prepare`` (decode, the Plus pipeline's condition resize, Qwen2-VL processor, text
encoder) and of decoding one upload alone. The tiny text encoder is a toy, so ``prepare`` here is the
host work (the real libraries on a real-size upload) that a GPU worker no longer does between jobs.
``generate`` itself is not timed: on this CPU the tiny VAE at 1 MP takes seconds with variance far
above the tens of milliseconds moved.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_serving import photo  # noqa: E402  (the GPU benchmark's photo-like upload)

from serve_app import images  # noqa: E402
from serve_app.presets import build_registry  # noqa: E402
from serve_app.worker.engine import EditEngine  # noqa: E402


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--images", type=int, default=1)
    args = ap.parse_args()
    uploads = [photo(args.side) for _ in range(args.images)]
    preset = build_registry({"tiny": {"resolution": 1024}})["tiny"]
    with tempfile.TemporaryDirectory() as tmp:
        engine = EditEngine(tmp)
        engine.choose_profile([preset])
        engine.ensure(preset)
        result = {
            "uploads": args.images, "upload_side": args.side, "upload_png_bytes": len(uploads[0]),
            "decode_one_upload_ms": median_ms(lambda: images.decode(uploads[0]), args.runs),
            "prepare_ms": median_ms(lambda: engine.prepare(preset, uploads, "make the sky blue"), args.runs),
        }
    print(result)


if __name__ == "__main__":
    main()
