"""How many status reads one queue replica answers per second, and so how many stations it carries.

    .venv/bin/python bench/queue_capacity.py [--jobs 10] [--callers 64] [--seconds 20]

A local Ray cluster on 127.0.0.1 with the app from config/serve.yaml, its model worker pinned to a
Ray resource ("parking") that a placeholder actor holds: the cluster could host it, so jobs are
accepted, but it never starts, so no model work runs and the queued jobs stay queued. ``--jobs``
jobs are submitted through HTTP. Then ``--callers`` concurrent callers in this driver call the queue
replica's ``status`` through a Serve deployment handle, as an ingress replica does, each as fast as
the answers come, for ``--seconds``: the queue replica's own throughput at saturation, without the
HTTP proxy and the ingress (which on a busy site run on other replicas and cores). Also the same
through HTTP (proxy -> ingress -> queue), one client per caller, for comparison.

Stations at a 1 s poll interval that one queue replica carries = status calls per second at
saturation, halved to leave the queue room for submits, outcomes, progress and events.
"""

import argparse
import asyncio
import copy
import io
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import yaml
from loopback import free_port, use_loopback_env  # bench/loopback.py, beside this script
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KEY = "bench-key-0123456789"


def photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 140, 200)).save(buf, "PNG")
    return buf.getvalue()


async def saturate(call, callers: int, seconds: float) -> dict:
    """``callers`` loops of ``await call()`` for ``seconds``: calls per second and latency."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def loop():
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    start = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(callers)))
    elapsed = time.monotonic() - start
    q = statistics.quantiles(latencies, n=100)
    return {"calls": len(latencies), "per_second": round(len(latencies) / elapsed, 1),
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    use_loopback_env()
    import ray
    from ray import serve

    from serve_app.auth import Caller
    from serve_app.deployments import build_app

    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="bench-state-"))
    (state / "api_key").write_text(KEY)
    config = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())["applications"][0]["args"]
    app_args = {**copy.deepcopy(config), "state_dir": str(state), "rate_limit": None,
                "max_queue_size": max(10, args.jobs), "worker": {"num_cpus": 0, "resources": {"parking": 1}}}
    ray.init(address="local", num_cpus=2, resources={"parking": 1}, include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0, resources={"parking": 1})
    class Placeholder:
        def ready(self):
            return True

    parked = Placeholder.remote()
    ray.get(parked.ready.remote(), timeout=60)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # Not waiting for RUNNING: the parked worker never starts.
        serve.run_many([serve.RunTarget(build_app(app_args), name="capacity", route_prefix="/")],
                       wait_for_applications_running=False)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": KEY}, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/queue").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the app did not come up"
            time.sleep(0.5)
        ids = []
        while len(ids) < args.jobs:
            r = client.post("/submit", files={"image": ("a.png", photo(), "image/png")}, data={"instruction": "x"})
            if r.status_code == 200:
                ids.append(r.json()["job_id"])
            else:
                assert time.monotonic() < deadline + 60, r.text
                time.sleep(0.5)
        handle = serve.get_deployment_handle("QueueActor", app_name="capacity")
        admin = Caller("default", True)
        n = [0]

        async def direct():
            n[0] += 1
            await handle.status.remote(ids[n[0] % len(ids)], admin)

        queue = asyncio.run(saturate(direct, args.callers, args.seconds))
        print("queue replica, through a handle:", json.dumps(queue), flush=True)

        async def over_http():
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": KEY},
                                         timeout=30, limits=httpx.Limits(max_connections=args.callers)) as http:
                async def call():
                    n[0] += 1
                    (await http.get(f"/status/{ids[n[0] % len(ids)]}")).raise_for_status()
                return await saturate(call, args.callers, args.seconds)

        http = asyncio.run(over_http())
        print("proxy -> ingress -> queue, over HTTP:", json.dumps(http), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    result = {"date": date.today().isoformat(), "command": "bench/queue_capacity.py " + " ".join(sys.argv[1:]),
              "callers": args.callers, "seconds": args.seconds, "jobs": args.jobs,
              "queue_replica_status_calls": queue, "http_status": http,
              "stations_at_1s_poll_per_queue_replica": int(queue["per_second"] / 2)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
