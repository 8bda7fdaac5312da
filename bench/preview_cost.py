"""What live previews cost: the same edit with and without ``on_preview``, through the service's
own engine (serve_app.worker.engine.EditEngine), runs interleaved so drift hits both alike.

    .venv/bin/python bench/preview_cost.py                       # the tiny model on CPU
    python3 bench/preview_cost.py --random-full --runs 5         # a GPU: the full-size model, random weights
    python bench/preview_cost.py --preset qwen-4step --models DIR --runs 5   # real weights (checks the factors)

``--random-full`` builds the published architecture at full size with random bf16 weights (as
bench/gpu_edit.py does; ``--smoke`` for its toy size on CPU) and runs a 4-step, 1024x1024 edit on it:
the cost share is real, the projection check is not (a random VAE).

Reports the seconds per denoising step with and without previews, their difference as a share of
a step, and the preview alone (projection + JPEG) timed on a job's real latents. On the tiny model a
step takes milliseconds, so the share there says little; the figure that matters (at most 2 % of
a step) is the GPU one. Also checks that the result's pixels are identical with and without.
"""

import argparse
import io
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def photo(side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(side, side, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--models", default=None, help="models folder (the tiny model is built there if missing)")
    ap.add_argument("--resolution", type=int, default=None, help="working area side (default: the preset's)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--random-full", action="store_true", help="the full-size architecture, random weights")
    ap.add_argument("--smoke", action="store_true", help="with --random-full: its toy size, on CPU")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import tempfile

    import torch

    from serve_app.presets import build_registry
    from serve_app.worker.engine import EditEngine

    over = {args.preset: {"resolution": args.resolution}} if args.resolution else {}
    engine = EditEngine(args.models or tempfile.mkdtemp(prefix="preview-bench-"), profile="bf16")
    if args.random_full:
        import importlib.util

        spec = importlib.util.spec_from_file_location("gpu_edit", ROOT / "bench" / "gpu_edit.py")
        gpu_edit = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gpu_edit)
        pipe, _, _ = gpu_edit.build_pipeline(engine.device, engine.dtype, args.smoke)
        engine.use_pipeline(pipe, "random/full-size")
        over = {"random": {"base": "random/full-size", "steps": 4, "cfg_scale": 1.0, "nominal_seconds": 2.0,
                           "resolution": args.resolution or (256 if args.smoke else 1024)}}
        args.preset = "random"
    preset = build_registry(over)[args.preset]
    image = photo(min(preset.resolution, 1024))
    sync = torch.cuda.synchronize if engine.device == "cuda" else (lambda: None)

    def once(previews: bool) -> tuple[float, object, int]:
        shown = []
        stamps = []

        def on_step(step, total):
            sync()
            stamps.append(time.perf_counter())

        extra = {"on_preview": lambda step, jpeg: shown.append(len(jpeg))} if previews else {}
        out = engine.generate(preset, [image], "make the sky blue", seed=7, on_step=on_step, **extra)
        sync()
        per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)  # from step 1's end: no encoders
        return per_step, out, len(shown)

    engine.generate(preset, [image], "warm up", seed=0, on_preview=lambda s, j: None)  # loads, fits the projection
    plain, shown = [], []
    first = second = None
    for _ in range(args.runs):
        t, first, _ = once(False)
        plain.append(t)
        t, second, n = once(True)
        shown.append(t)
    same = np.array_equal(np.asarray(first), np.asarray(second))
    without, with_ = statistics.median(plain), statistics.median(shown)
    projection = engine.preview_projection()
    result = {
        "date": date.today().isoformat(), "command": "bench/preview_cost.py " + " ".join(sys.argv[1:]),
        "device": engine.device_info.name if hasattr(engine.device_info, "name") else engine.device,
        "preset": preset.name, "steps": preset.steps, "resolution": preset.resolution, "runs": args.runs,
        "step_seconds_without": round(without, 5), "step_seconds_with": round(with_, 5),
        "overhead_share_of_a_step": round((with_ - without) / without, 4),
        "previews_per_job": n, "pixels_identical": bool(same),
        "projection": {"source": projection.source, "r2": round(projection.r2, 3)},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
