"""Serving overhead on CPU: jobs per second through the whole HTTP + queue + worker stack, against
the same pipeline called directly in a loop in one process, same tiny model and inputs, one run.

    .venv/bin/python bench/serving_overhead.py [--jobs 20]

1. direct: ``EditEngine.run`` in a loop (decode, pipeline, PNG encode), no Ray running;
2. served: a local Ray cluster on 127.0.0.1 with the app from config/serve.yaml; one client keeps
   the queue full (on 429 it retries after Retry-After seconds) and sends the last job through the blocking
   /edit, which answers when that job, the last in FIFO order, is done;
   throughput = jobs / (first submit -> last job's answer).
Prints both rates and their ratio (served / direct). Loopback only, bounded in jobs and time.
"""

import argparse
import copy
import io
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from PIL import Image

from loopback import free_port, use_loopback_env  # bench/loopback.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"


def photo() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(512, 512, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def direct(args, models: Path, image: bytes) -> float:
    from serve_app.pipeline import EditEngine
    from serve_app.presets import build_registry

    preset = build_registry(config_args()["presets"])["tiny"]
    engine = EditEngine(str(models))
    engine.run(preset, image, "warm up", seed=0)
    start = time.perf_counter()
    for i in range(args.jobs):
        engine.run(preset, image, "make the sky blue", seed=i)
    return args.jobs / (time.perf_counter() - start)


def config_args() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())["applications"][0]["args"])


def served(args, models: Path, image: bytes) -> float:
    import ray
    from ray import serve

    from serve_app.deployments import build_app

    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    (state / "api_key").write_text(KEY)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app_args = {**config_args(), "state_dir": str(state), "models_dir": str(models)}
        serve.run(build_app(app_args), name="bench", route_prefix="/")
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": KEY}, timeout=60)
        while not client.get("/health").json()["model_loaded"]:
            time.sleep(0.2)
        warm = client.post("/edit", files={"image": ("a.png", image, "image/png")}, data={"instruction": "warm up"})
        assert warm.status_code == 200, warm.text
        # Jobs 1..N-1 through /submit, keeping the queue full (a 429 means: full, retry shortly);
        # job N through the blocking /edit: FIFO makes it the last to finish, and its answer
        # arrives the moment it is done, so no polling load or polling delay enters the figure.
        files = {"image": ("a.png", image, "image/png")}
        submitted, start, deadline = 0, time.perf_counter(), time.monotonic() + 600
        while submitted < args.jobs - 1 and time.monotonic() < deadline:
            r = client.post("/submit", files=files, data={"instruction": "make the sky blue", "seed": str(submitted)})
            if r.status_code == 429:  # a well-behaved station waits as told
                time.sleep(float(r.headers["Retry-After"]) if args.poll is None else args.poll)
                continue
            assert r.status_code == 200, r.text
            submitted += 1
        while time.monotonic() < deadline:
            r = client.post("/edit", files=files, data={"instruction": "make the sky blue", "seed": str(submitted)})
            if r.status_code == 200:
                return args.jobs / (time.perf_counter() - start)
            assert r.status_code == 429, r.text
            time.sleep(float(r.headers["Retry-After"]) if args.poll is None else args.poll)
        raise TimeoutError("served run did not finish in 600 s")
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description="serving overhead on CPU (tiny model)")
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--poll", type=float, default=None,
                    help="seconds before retrying a submit refused with 429 (default: its Retry-After)")
    ap.add_argument("--served-only", action="store_true")
    args = ap.parse_args()
    use_loopback_env()
    models = Path(tempfile.mkdtemp(prefix="bench-models-"))
    image = photo()
    d = 1.0 if args.served_only else direct(args, models, image)
    s = served(args, models, image)
    print(f"direct: {d:.3f} jobs/s  served (HTTP + queue + worker): {s:.3f} jobs/s  "
          f"ratio served/direct: {s / d:.3f}  ({args.jobs} jobs, 512x512 input, tiny at 256^2)")


if __name__ == "__main__":
    main()
