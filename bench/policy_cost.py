"""What the prompt policy and the output check cost a job, as ratios in one run on this machine.

Alternates, on the tiny model (CPU), a job's work as the worker does it without a check (generate,
then PNG encode) and with NudeNet's output check between them, and times the prompt policy on a
500-character instruction. Prints one JSON object; ``--out`` writes it too.

    .venv/bin/python bench/policy_cost.py --jobs 20 --resolution 256
"""

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_app.image_checks import ImageCheck, ImagePolicy  # noqa: E402
from serve_app.presets import build_registry  # noqa: E402
from serve_app.prompts import PromptPolicy  # noqa: E402
from serve_app.worker.engine import EditEngine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20, help="jobs of each kind, alternated")
    ap.add_argument("--resolution", type=int, default=256, help="the tiny preset's working area side")
    ap.add_argument("--models", default="state/models", help="where the tiny model is (built if missing)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    preset = build_registry({"tiny": {"resolution": args.resolution}})["tiny"]
    engine = EditEngine(args.models)
    check = ImageCheck(ImagePolicy())
    check.load()
    # a smooth gradient photo-like input, made here (benches import nothing from tests/)
    ramp = np.linspace(0, 255, 512, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (512, 1)), np.tile(ramp[:, None], (1, 512)), np.full((512, 512), 90, np.uint8)], -1)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    image = buf.getvalue()
    engine.run(preset, image, "warm up", seed=0)
    check.found(np.zeros((64, 64, 3), np.uint8))  # the ONNX session's first run

    plain, checked, check_only = [], [], []
    for i in range(args.jobs):
        for with_check in (False, True):
            start = time.perf_counter()
            out = engine.generate(preset, [image], "make the sky blue", seed=i)
            if with_check:
                t = time.perf_counter()
                check.withheld(np.asarray(out.convert("RGB")))
                check_only.append(time.perf_counter() - t)
            engine.encode(out)
            (checked if with_check else plain).append(time.perf_counter() - start)

    policy, text = PromptPolicy(), ("make the sky a deep evening blue, " * 15)[:500]
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        policy.found(text, "You retouch portraits for a photo station.")
    per_prompt = (time.perf_counter() - start) / n

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "jobs": args.jobs, "resolution": args.resolution,
        "job_median_s": statistics.median(plain), "job_with_check_median_s": statistics.median(checked),
        "check_median_s": statistics.median(check_only),
        "checked_over_plain": statistics.median(checked) / statistics.median(plain),
        "check_share_of_job": statistics.median(check_only) / statistics.median(plain),
        "prompt_policy_share_of_job": per_prompt / statistics.median(plain),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
