"""Do stations listening to a job's events slow the model worker? (CPU, tiny model, loopback)

    .venv/bin/python bench/event_listeners.py [--jobs 5] [--listeners 50]

A local Ray cluster on 127.0.0.1 serves the app from config/serve.yaml with an 8-step preset at
384x384. Jobs run one after another, first with nobody listening, then with ``--listeners`` open
Server-Sent Events streams on each job (all reading every event to the end). For each job the
worker's own run time (``run_seconds`` in the status: from the start of generation to the result)
is recorded; the script prints the medians, their ratio, and the events each listener received.

On this 2-core machine the listeners' HTTP work shares the cores with the model, so the ratio is
an upper bound on the cost: on a GPU the model's work is not on these cores. The worker reports
steps without waiting for an answer, so listeners cannot hold it up through the queue.
"""

import argparse
import asyncio
import copy
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from loopback import free_port, use_loopback_env  # bench/loopback.py, beside this script
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"
SLOW = {"base": "builtin:tiny", "steps": 8, "cfg_scale": 1.0, "resolution": 384, "nominal_seconds": 2.0}


def photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (384, 384), (90, 140, 200)).save(buf, "PNG")
    return buf.getvalue()


async def listen(client: httpx.AsyncClient, job_id: str) -> int:
    """Events this listener received; asserts the stream ended with ``completed``."""
    events, last = 0, None
    async with client.stream("GET", f"/status/{job_id}/events", timeout=120) as r:
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                events, last = events + 1, line[7:]
    assert last == "completed", f"a stream ended with {last}"
    return events


async def one_job(client: httpx.AsyncClient, image: bytes, listeners: int, seed: int) -> tuple[float, list[int]]:
    r = await client.post("/submit", files={"image": ("a.png", image, "image/png")},
                          data={"instruction": "make the sky blue", "preset": "slow", "seed": str(seed)})
    r.raise_for_status()
    job_id = r.json()["job_id"]
    counts = await asyncio.gather(*[listen(client, job_id) for _ in range(listeners)])
    while (view := (await client.get(f"/status/{job_id}")).json())["status"] not in ("completed", "failed"):
        await asyncio.sleep(0.1)
    assert view["status"] == "completed", view
    return view["run_seconds"], list(counts)


async def measure(port: int, jobs: int, listeners: int, image: bytes) -> dict:
    limits = httpx.Limits(max_connections=listeners + 10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": KEY},
                                 timeout=60, limits=limits) as client:
        await one_job(client, image, 0, 0)  # warm
        out = {}
        for n in (0, listeners):
            runs, events = [], []
            for i in range(jobs):
                run, counts = await one_job(client, image, n, i + 1)
                runs.append(run)
                events += counts
            out[n] = (statistics.median(runs), events)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--listeners", type=int, default=50)
    args = ap.parse_args()
    use_loopback_env()
    import ray
    from ray import serve

    from serve_app.deployments import build_app

    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    (state / "api_key").write_text(KEY)
    config = copy.deepcopy(yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())["applications"][0]["args"])
    config.update(state_dir=str(state), presets={"slow": SLOW})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="bench", route_prefix="/")
        deadline = time.monotonic() + 120
        while not httpx.get(f"http://127.0.0.1:{port}/api/v1/health").json()["model_loaded"]:
            assert time.monotonic() < deadline, "the model worker did not start in 120 s"
            time.sleep(0.3)
        result = asyncio.run(asyncio.wait_for(measure(port, args.jobs, args.listeners, image=photo()), 900))
    finally:
        serve.shutdown()
        ray.shutdown()
    (quiet, _), (busy, events) = result[0], result[args.listeners]
    print(f"worker run time per 8-step job (median of {args.jobs}): {quiet:.3f} s with no listener, "
          f"{busy:.3f} s with {args.listeners} listeners: ratio {busy / quiet:.3f}; events per listener "
          f"min {min(events)} max {max(events)}, every stream ended with the final event")


if __name__ == "__main__":
    main()
