"""Load: many stations submitting and polling at once, on loopback, bounded in stations and time.

    .venv/bin/python bench/load.py compare [--stations 20] [--seconds 60] [--variants ray,haproxy,plain] [--out FILE]
    .venv/bin/python bench/load.py run --url URL --key KEY [--key KEY2 ...] [--stations 20] [--seconds 60]
    .venv/bin/python bench/load.py plain CONFIG [--port 8000]
    .venv/bin/python bench/load.py flood [--stations 20] [--seconds 30] [--flooders 4] [--out FILE]

``run``: each station (an aiohttp client) submits a job, polls its status every ``--poll`` seconds
until it ends, downloads the PNG, and starts over until ``--seconds`` have passed; on 429 it waits
``Retry-After`` (at most 2 s) and tries again. Then the stations stop submitting and wait (bounded)
for every accepted job. Reported: requests by status code (any 5xx fails the run), jobs accepted /
completed / lost (accepted but not completed) / duplicated (the server completed more jobs than were
accepted, or one id was accepted twice), the status route's latency (p50, p99, mean) and requests
per second, jobs per minute.

``plain``: the service's own FastAPI app, queue and model worker (the same classes) in one process
under plain uvicorn, without Ray: the queue and worker are called directly instead of through
deployment handles. What Ray Serve costs shows as the ratio of ``run`` against each.

``compare``: both, one after the other on this machine (``qwen-serve`` with a generated config, then
``plain`` with the same one), the same load on each, and the ratios; JSON to ``--out``. The variant
``haproxy`` is ``qwen-serve`` with ``http_proxy: haproxy`` (Serve's direct ingress).

``flood``: one ``qwen-serve`` with the default rate limit, each station with its own key: after a
10 s warm-up, the stations' load alone and while one more station (its own key, another process)
polls ``/api/v1/queue`` as fast as ``--flooders`` connections allow, interleaved (alone, flooded,
alone, flooded, alone). Reported: the normal stations' status p50/p99 in each run, the median p99
flooded over the median p99 alone, and the flooder's answers (mostly 429).

Every generated config gives each station its own key (a keys file): stations are rate-limited
per key, as deployed.
The model is the embedded tiny one with a 1-step 64x64 preset, so the serving stack is what is loaded.
"""

import argparse
import asyncio
import copy
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from loopback import RAY_ENV, free_port  # bench/loopback.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
SPECK = {"base": "builtin:tiny", "steps": 1, "cfg_scale": 1.0, "resolution": 64, "nominal_seconds": 0.2}
TERMINAL = ("completed", "failed", "cancelled")


def small_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


# --- the load ---------------------------------------------------------------------------------------

class Tally:
    def __init__(self):
        self.codes: dict[str, int] = {}
        self.status_latency: list[float] = []
        self.accepted: list[str] = []
        self.completed: set[str] = set()
        self.errors: list[str] = []

    def code(self, route: str, status: int) -> None:
        key = f"{route} {status}"
        self.codes[key] = self.codes.get(key, 0) + 1


async def station(http, base: str, image: bytes, tally: Tally, stop_at: float, poll: float, n: int,
                  preset: str | None) -> None:
    import aiohttp

    async def status(job_id: str) -> dict:
        t0 = time.perf_counter()
        async with http.get(f"{base}/api/v1/status/{job_id}") as r:
            body = await r.json()
            tally.status_latency.append(time.perf_counter() - t0)
            tally.code("status", r.status)
            return body

    seed = n * 1_000_000
    while time.monotonic() < stop_at:
        form = aiohttp.FormData()
        form.add_field("image", image, filename="in.png", content_type="image/png")
        form.add_field("instruction", f"station {n}: make it blue")
        form.add_field("seed", str(seed))
        if preset:
            form.add_field("preset", preset)
        seed += 1
        async with http.post(f"{base}/api/v1/submit", data=form,
                             headers={"Idempotency-Key": str(uuid.uuid4())}) as r:
            tally.code("submit", r.status)
            body = await r.json()
            if r.status == 429:
                await asyncio.sleep(min(float(r.headers.get("Retry-After", 1)), 2.0))
                continue
            if r.status != 200:
                tally.errors.append(f"submit {r.status}: {body}")
                await asyncio.sleep(0.5)
                continue
        job_id = body["job_id"]
        tally.accepted.append(job_id)
        while True:  # follow the job to its end, even past the deadline
            view = await status(job_id)
            if view.get("status") in TERMINAL:
                break
            await asyncio.sleep(poll)
        if view["status"] == "completed":
            async with http.get(f"{base}/api/v1/status/{job_id}/result") as r:
                data = await r.read()
                tally.code("result", r.status)
                if r.status == 200 and data.startswith(b"\x89PNG"):
                    tally.completed.add(job_id)


def station_keys(stations: int) -> dict[str, str]:
    """Station name -> its key, for the generated keys file (``flood`` is the flooding station's)."""
    names = [f"s{n:02d}" for n in range(stations)] + ["flood"]
    return {name: f"load-bench-{name}-" + "k" * 16 for name in names}


async def load(url: str, keys: list[str], stations: int, seconds: float, poll: float, preset: str | None = None,
               drain_s: float = 120.0) -> dict:
    """Station ``n`` sends ``keys[n % len(keys)]``."""
    import aiohttp

    image = small_png()
    base = url.rstrip("/")
    tally = Tally()
    timeout = aiohttp.ClientTimeout(total=60)
    sessions = [aiohttp.ClientSession(headers={"X-API-Key": key}, timeout=timeout,
                                      connector=aiohttp.TCPConnector(limit=4)) for key in keys[:stations]]
    try:
        http = sessions[0]
        async with http.get(f"{base}/api/v1/queue") as r:
            before = (await r.json())["completed_count"]
        start = time.monotonic()
        stop_at = start + seconds
        tasks = [asyncio.create_task(station(sessions[n % len(sessions)], base, image, tally, stop_at, poll, n,
                                             preset)) for n in range(stations)]
        done, pending = await asyncio.wait(tasks, timeout=seconds + drain_s)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                tally.errors.append(f"station crashed: {task.exception()!r}")
        elapsed = time.monotonic() - start
        async with http.get(f"{base}/api/v1/queue") as r:
            after = (await r.json())["completed_count"]
    finally:
        for session in sessions:
            await session.close()
    lat = sorted(tally.status_latency)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    accepted = len(tally.accepted)
    return {
        "stations": stations, "seconds": seconds, "elapsed_s": round(elapsed, 1), "poll_s": poll,
        "requests": tally.codes, "server_errors": sum(n for k, n in tally.codes.items() if int(k.split()[1]) >= 500),
        "errors": tally.errors[:20],
        "jobs_accepted": accepted, "jobs_completed": len(tally.completed),
        "jobs_lost": accepted - len(tally.completed) + len(pending),
        "jobs_duplicated": (accepted - len(set(tally.accepted))) + max(0, (after - before) - accepted),
        "server_completed_delta": after - before,
        "jobs_per_minute": round(len(tally.completed) / elapsed * 60, 1),
        "status_requests": len(lat), "status_per_second": round(len(lat) / elapsed, 1),
        "status_p50_ms": round(q[49] * 1000, 2), "status_p99_ms": round(q[98] * 1000, 2),
        "status_mean_ms": round(statistics.fmean(lat) * 1000, 2) if lat else None,
    }


async def hammer(url: str, key: str, seconds: float, connections: int) -> dict:
    """GET /api/v1/queue as fast as ``connections`` connections allow, ignoring Retry-After."""
    import aiohttp

    codes: dict[int, int] = {}
    stop_at = time.monotonic() + seconds

    async def one(http):
        while time.monotonic() < stop_at:
            async with http.get(f"{url.rstrip('/')}/api/v1/queue") as r:
                await r.read()
                codes[r.status] = codes.get(r.status, 0) + 1

    async with aiohttp.ClientSession(headers={"X-API-Key": key},
                                     connector=aiohttp.TCPConnector(limit=connections)) as http:
        await asyncio.gather(*(one(http) for _ in range(connections)))
    total = sum(codes.values())
    return {"requests": {str(k): v for k, v in sorted(codes.items())}, "per_second": round(total / seconds, 1)}


# --- the plain server (no Ray) ----------------------------------------------------------------------

class LocalHandle:
    """Stands in for a DeploymentHandle: ``handle.method.remote(*args)`` runs the (async) method on
    this event loop, with no serialization, no routing and no other process."""

    def __init__(self, target):
        self._target = target

    def options(self, **_):
        return self  # (Ray calls or gRPC: one process has neither)

    def __getattr__(self, name):
        method = getattr(self._target, name)

        class _Method:
            @staticmethod
            def remote(*args, **kwargs):
                return asyncio.ensure_future(method(*args, **kwargs))

        return _Method()


async def plain_serve(config: Path, port: int) -> None:
    """The service's own classes in this process, served by uvicorn: the queue and a worker as plain
    objects, and the HTTP app from the same factory each ingress replica calls (``ingress.app.make_app``)."""
    import uvicorn

    from serve_app.config import build_settings
    from serve_app.contract.queue_client import IngressQueue
    from serve_app.ingress.app import make_app
    from serve_app.ingress.service import EditService
    from serve_app.queue.actor import QueueActor
    from serve_app.worker.deployment import ModelWorker

    settings = build_settings(yaml.safe_load(config.read_text())["applications"][0]["args"])

    async def make(deployment, *init_args):
        cls = deployment.func_or_class
        obj = cls.__new__(cls)
        result = cls.__init__(obj, *init_args)
        if asyncio.iscoroutine(result):  # the queue and the worker have async constructors
            await result
        return obj

    queue = await make(QueueActor, settings)
    worker = await make(ModelWorker, LocalHandle(queue), settings)
    app = make_app(EditService(IngressQueue(LocalHandle(queue), grpc=False), settings), settings)
    print(f"plain: serving on http://127.0.0.1:{port} (worker {worker.id})", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    await server.serve()


# --- compare ----------------------------------------------------------------------------------------

def write_config(folder: Path, port: int, models: Path, stations: int, rate: float | None = None,
                 http_proxy: str = "python") -> Path:
    """config/serve.yaml on ``port`` with the speck preset as default and a keys file with one key per
    station (``station_keys``); ``rate``: requests per second per station instead of the file's limit
    (bursts of three seconds' worth)."""
    config = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    (folder / "state").mkdir(parents=True, exist_ok=True)
    keys = folder / "keys.yaml"
    keys.write_text(yaml.safe_dump(station_keys(stations)))
    args.update(state_dir=str(folder / "state"), models_dir=str(models), default_preset="speck",
                presets={**copy.deepcopy(args.get("presets", {})), "speck": SPECK}, graceful_stop_seconds=5,
                api_keys_file=str(keys), http_proxy=http_proxy)
    if rate is not None:
        args["rate_limit"] = {"requests_per_second": rate, "burst": max(1, int(rate * 3))}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_healthy(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=3).json().get("model_loaded"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy within {timeout:.0f}s")


def start_server(command: list[str], url: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                start_new_session=True)
    try:
        wait_healthy(url, 240)
    except BaseException:
        stop_server(proc)
        raise
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_server(command: list[str], url: str, log: Path, opts) -> dict:
    proc = start_server(command, url, log)
    try:
        keys = list(station_keys(opts.stations).values())[: opts.stations]
        return asyncio.run(load(url, keys, opts.stations, opts.seconds, opts.poll, opts.preset))
    finally:
        stop_server(proc)


def compare(opts) -> dict:
    work = Path(tempfile.mkdtemp(prefix="qwen-load-"))
    models = Path(opts.models).resolve() if opts.models else work / "models"
    results = {}
    variants = opts.variants.split(",")
    for name in variants:
        port = free_port()
        folder = work / name
        folder.mkdir()
        config = write_config(folder, port, models, opts.stations, http_proxy="haproxy" if name == "haproxy" else "python")
        command = ([str(Path(sys.executable).with_name("qwen-serve")), str(config)] if name != "plain"
                   else [sys.executable, str(Path(__file__).resolve()), "plain", str(config), "--port", str(port)])
        results[name] = run_server(command, f"http://127.0.0.1:{port}", folder / "server.log", opts)
        print(name, json.dumps(results[name]), flush=True)
    plain = results.get("plain")
    for name in (v for v in variants if v != "plain" and plain):
        results[f"ratios_{name}_over_plain"] = {
            k: round(results[name][k] / plain[k], 2) if plain[k] else None
            for k in ("status_p50_ms", "status_p99_ms", "status_per_second", "jobs_per_minute")}
    results["date"] = time.strftime("%Y-%m-%d")
    results["command"] = "bench/load.py compare " + " ".join(sys.argv[2:])
    return results


def flood(opts) -> dict:
    work = Path(tempfile.mkdtemp(prefix="qwen-flood-"))
    models = Path(opts.models).resolve() if opts.models else work / "models"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_config(work, port, models, opts.stations, opts.rate)
    keys = station_keys(opts.stations)
    normal = [keys[f"s{n:02d}"] for n in range(opts.stations)]
    proc = start_server([str(Path(sys.executable).with_name("qwen-serve")), str(config)], url, work / "server.log")
    runs: list[dict] = []
    try:
        asyncio.run(load(url, normal, opts.stations, 10, opts.poll, opts.preset))  # warm-up, not counted
        for n, flooded in enumerate([False, True, False, True, False]):  # interleaved: drift hits both
            flooder = None
            if flooded:
                flooder = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "hammer", "--url", url,
                                            "--key", keys["flood"], "--seconds", str(opts.seconds + 5),
                                            "--connections", str(opts.flooders)], stdout=subprocess.PIPE, text=True)
                time.sleep(2)  # the flood is on before the stations start
            run = asyncio.run(load(url, normal, opts.stations, opts.seconds, opts.poll, opts.preset))
            run["flooded"] = flooded
            if flooder is not None:
                out, _ = flooder.communicate(timeout=opts.seconds + 120)
                run["flooder"] = json.loads(out.strip().splitlines()[-1])
            runs.append(run)
            print(n, json.dumps({k: v for k, v in run.items() if k not in ("errors", "requests")}), flush=True)
    finally:
        stop_server(proc)
    alone = statistics.median(r["status_p99_ms"] for r in runs if not r["flooded"])
    rate = yaml.safe_load(config.read_text())["applications"][0]["args"].get("rate_limit")
    flood_p99 = statistics.median(r["status_p99_ms"] for r in runs if r["flooded"])
    return {"runs": runs, "rate_limit": rate, "status_p99_ms_alone_median": alone, "status_p99_ms_flooded_median": flood_p99,
            "p99_flooded_over_alone": round(flood_p99 / alone, 2),
            "date": time.strftime("%Y-%m-%d"), "command": "bench/load.py flood " + " ".join(sys.argv[2:])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("run", "compare", "flood"):
        p = sub.add_parser(name)
        p.add_argument("--stations", type=int, default=20)
        p.add_argument("--seconds", type=float, default=30 if name == "flood" else 60)
        p.add_argument("--poll", type=float, default=0.25, help="seconds between a station's status polls")
        p.add_argument("--out", type=Path)
        p.add_argument("--preset", help="preset the jobs name (default: the server's default)")
        if name == "run":
            p.add_argument("--url", required=True)
            p.add_argument("--key", required=True, action="append",
                           help="repeat for several keys: station n sends the n-th (modulo)")
        else:
            p.add_argument("--models", help="where the tiny model is (built there if missing)")
        if name == "compare":
            p.add_argument("--variants", default="ray,plain",
                           help="comma-separated, run in this order: ray (qwen-serve, Serve's Python proxy), "
                                "haproxy (qwen-serve with http_proxy: haproxy), plain (uvicorn, no Ray)")
        if name == "flood":
            p.add_argument("--flooders", type=int, default=4, help="the flooding station's connections")
            p.add_argument("--rate", type=float, help="rate_limit.requests_per_second (default: the config's)")
    p = sub.add_parser("plain")
    p.add_argument("config", type=Path)
    p.add_argument("--port", type=int, default=8000)
    p = sub.add_parser("hammer")
    p.add_argument("--url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--connections", type=int, default=4)
    opts = parser.parse_args(argv)
    # A SIGTERM (a timeout) unwinds like an exception, so the server this run started is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if opts.cmd == "plain":
        asyncio.run(plain_serve(opts.config, opts.port))
        return 0
    if opts.cmd == "hammer":
        print(json.dumps(asyncio.run(hammer(opts.url, opts.key, min(opts.seconds, 600), min(opts.connections, 32)))))
        return 0
    if not (1 <= opts.stations <= 200 and 1 <= opts.seconds <= 600):
        parser.error("stations must be 1-200 and seconds 1-600 (this is a loopback bench, bounded)")
    if opts.cmd == "run":
        result = asyncio.run(load(opts.url, opts.key, opts.stations, opts.seconds, opts.poll, opts.preset))
    else:
        result = compare(opts) if opts.cmd == "compare" else flood(opts)
    print(json.dumps(result, indent=1))
    if opts.out:
        opts.out.write_text(json.dumps(result, indent=1))
    runs = {"run": lambda: [result], "compare": lambda: [result[v] for v in opts.variants.split(",")],
            "flood": lambda: result["runs"]}[opts.cmd]()
    bad = [r for r in runs if r["server_errors"] or r["jobs_lost"] or r["jobs_duplicated"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
