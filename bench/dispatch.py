"""Preset switches per 100 mixed jobs on two model workers, with preset affinity off and on.

    .venv/bin/python bench/dispatch.py [--jobs 100] [--mix uniform|skewed] [--out FILE]

A local Ray cluster on 127.0.0.1 with two faked GPUs and the app from config/serve.yaml, its two
workers on them (the tiny model on CPU), three presets that differ by their LoRA (``la``, ``lb``,
``lc``: random Lightning-format LoRAs; on a real GPU each switch between such presets costs
0.75-2.9 s, BENCHMARKS.md). Jobs name a preset drawn at random (the same seeded draw in every run):
``uniform`` (a third each) or ``skewed`` (60 % la, 30 % lb, 10 % lc: most stations on one preset).
Two load patterns, each run with ``preset_affinity`` false (the earlier behaviour: an asking worker
takes the next job whatever it holds) and true:

- ``paced``: two stations, each submitting a job and waiting for it before the next: jobs mostly
  find both workers idle;
- ``bursts``: two jobs at once, then nothing until both are done (a quiet site where two stations
  happen to submit together): both workers are idle whenever jobs arrive;
- ``saturated``: one client keeps the queue full (10 jobs): workers are never idle, jobs are taken
  as workers finish.

Counts the queue's ``preset_switches`` (jobs handed to a worker holding another preset) over the
jobs, and the wall time. Loopback only, bounded in jobs and time.
"""

import argparse
import copy
import io
import json
import random
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import yaml
from loopback import free_port, use_loopback_env  # bench/loopback.py, beside this script
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"
PRESETS = ("la", "lb", "lc")


def photo() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(128, 128, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def app_args(models: Path, state: Path, affinity: bool) -> dict:
    from diffusers import QwenImageTransformer2DModel

    from serve_app.worker.tiny_model import ensure_tiny_model, random_lightning_lora

    transformer = QwenImageTransformer2DModel.from_pretrained(ensure_tiny_model(models / "tiny") / "transformer")
    quick = {"base": "builtin:tiny", "steps": 1, "cfg_scale": 1.0, "resolution": 128, "nominal_seconds": 0.3}
    presets = {name: {**quick, "lora": {"path": str(random_lightning_lora(
        transformer, models / f"{name}.safetensors", seed=n + 1))}} for n, name in enumerate(PRESETS)}
    args = copy.deepcopy(yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())["applications"][0]["args"])
    # No rate limit: the paced stations poll their jobs every 50 ms, all with one key.
    args.update(state_dir=str(state), models_dir=str(models), presets=presets, preset_affinity=affinity,
                rate_limit=None)
    args["worker"] = {**args.get("worker", {}), "num_replicas": 2, "num_gpus": 1, "num_cpus": 0}
    return args


def paced(client: httpx.Client, image: bytes, plan: list[str]) -> None:
    """Two stations, each: submit, wait until done, next."""
    todo = iter(enumerate(plan))
    lock = threading.Lock()

    def station():
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            n, preset = item
            r = client.post("/submit", files={"image": ("a.png", image, "image/png")},
                            data={"instruction": "x", "preset": preset, "seed": str(n)})
            assert r.status_code == 200, r.text
            job = r.json()["job_id"]
            while client.get(f"/status/{job}").json()["status"] not in ("completed", "failed", "cancelled"):
                time.sleep(0.05)

    threads = [threading.Thread(target=station) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)


def bursts(client: httpx.Client, image: bytes, plan: list[str]) -> None:
    """Two jobs at once; the next two when both are done."""
    for n in range(0, len(plan), 2):
        jobs = []
        for k, preset in enumerate(plan[n:n + 2]):
            r = client.post("/submit", files={"image": ("a.png", image, "image/png")},
                            data={"instruction": "x", "preset": preset, "seed": str(n + k)})
            assert r.status_code == 200, r.text
            jobs.append(r.json()["job_id"])
        for job in jobs:
            while client.get(f"/status/{job}").json()["status"] not in ("completed", "failed", "cancelled"):
                time.sleep(0.05)
        while not all(w["state"] == "ready" for w in client.get("/health").json()["workers"]):
            time.sleep(0.05)
        time.sleep(0.3)  # "ready" comes with the outcome report; the next long poll follows it shortly


def saturated(client: httpx.Client, image: bytes, plan: list[str]) -> None:
    """One client keeps the queue full; then waits for it to drain."""
    n = 0
    while n < len(plan):
        r = client.post("/submit", files={"image": ("a.png", image, "image/png")},
                        data={"instruction": "x", "preset": plan[n], "seed": str(n)})
        if r.status_code == 429:
            time.sleep(0.1)
            continue
        assert r.status_code == 200, r.text
        n += 1
    while client.get("/queue").json()["queue_size"]:
        time.sleep(0.1)


def run(port: int, models: Path, affinity: bool, pattern: str, plan: list[str], image: bytes) -> dict:
    from ray import serve

    from serve_app.deployments import build_app

    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    (state / "api_key").write_text(KEY)
    serve.run(build_app(app_args(models, state, affinity)), name="dispatch", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": KEY}, timeout=60)
    deadline = time.monotonic() + 180
    while not (h := client.get("/health").json())["model_loaded"] or len(h["workers"]) < 2:
        assert time.monotonic() < deadline, "workers did not load"
        time.sleep(0.2)
    before = client.get("/queue").json()
    start = time.perf_counter()
    {"paced": paced, "bursts": bursts, "saturated": saturated}[pattern](client, image, plan)
    seconds = time.perf_counter() - start
    after = client.get("/queue").json()
    serve.delete("dispatch")
    return {"pattern": pattern, "preset_affinity": affinity, "jobs": len(plan),
            "completed": after["completed_count"] - before["completed_count"],
            "preset_switches": after["preset_switches"] - before["preset_switches"], "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--mix", choices=("uniform", "skewed"), default="uniform")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    use_loopback_env()
    import ray
    from ray import serve

    port = free_port()
    models = Path(tempfile.mkdtemp(prefix="bench-models-"))
    rnd = random.Random(11)
    weights = (1, 1, 1) if args.mix == "uniform" else (6, 3, 1)
    plan = rnd.choices(PRESETS, weights=weights, k=args.jobs)
    image = photo()
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    results = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for pattern in ("paced", "bursts", "saturated"):
            for affinity in (False, True):
                results.append(run(port, models, affinity, pattern, plan, image))
                print(json.dumps(results[-1]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    if args.out:
        args.out.write_text(json.dumps({"date": date.today().isoformat(), "command": "bench/dispatch.py "
                                        f"--jobs {args.jobs} --mix {args.mix}", "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
