"""Serving overhead on CPU: jobs per second through the whole HTTP + queue + worker stack, against
the same pipeline called directly in a loop in one process, same tiny model and inputs, one run.

    .venv/bin/python bench/serving_overhead.py [--jobs 20]

1. direct: ``EditEngine.run`` in a loop (decode, pipeline, PNG encode), no Ray running;
2. served: a local Ray cluster on 127.0.0.1 with the app from config/serve.yaml; one client keeps
   the queue full (on 429 it retries after Retry-After seconds) and sends the last job through the blocking
   /edit, which answers when that job, the last in FIFO order, is done;
   throughput = jobs / (first submit -> last job's answer).
Prints both rates and their ratio (served / direct), and the CPU time the served run took per job: in
the model worker, and in everything else on the machine (Ray's processes, the proxy, the ingress and
queue replicas, this client). Loopback only, bounded in jobs and time.

``--rounds N`` alternates them N times (direct, served, direct, ..., direct) and compares each served
run with the mean of the direct runs on either side of it: this machine's speed drifts by 10-20 %
within minutes (the same direct loop, minutes apart: 2.2 to 3.1 jobs/s on 2026-12-01), so a served
run set against one direct run before it measures the drift as much as the serving.
"""

import argparse
import copy
import io
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from loopback import free_port, use_loopback_env  # bench/loopback.py, beside this script
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789"


def photo() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(512, 512, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def direct(args, models: Path, image: bytes) -> tuple[float, float]:
    """(jobs per second, this process's CPU milliseconds per job: the pipeline's threads and all)."""
    from serve_app.presets import build_registry
    from serve_app.worker.engine import EditEngine

    preset = build_registry(config_args()["presets"])["tiny"]
    engine = EditEngine(str(models))
    engine.run(preset, image, "warm up", seed=0)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(args.jobs):
        engine.run(preset, image, "make the sky blue", seed=i)
    return args.jobs / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / args.jobs


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (its command line, its CPU seconds so far), for every process that can be read."""
    import psutil

    out = {}
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            times = proc.cpu_times()
            out[proc.pid] = (" ".join(proc.info["cmdline"] or [proc.info["name"] or ""]), times.user + times.system)
        except psutil.Error:
            pass
    return out


def process_name(cmd: str) -> str:
    """``ray::ProxyActor``, ``raylet``, ``log_monitor.py``: a process's name for the CPU breakdown."""
    words = cmd.split() or [""]
    if words[0].startswith("ray::"):
        return words[0]
    program = Path(words[0]).name
    scripts = [Path(w).name for w in words[1:] if w.endswith(".py")] if program.startswith("python") else []
    return scripts[0] if scripts else program


def cpu_split(before: dict, after: dict, jobs: int) -> dict:
    """CPU milliseconds per job spent meanwhile in the model worker, in every other process, and in
    each of the busiest processes (by the name Ray gives it, or its command)."""
    worker = rest = 0.0
    each = {}
    for pid, (cmd, seconds) in after.items():
        spent = seconds - before.get(pid, (cmd, 0.0))[1]
        if "ModelWorker" in cmd:
            worker += spent
        else:
            rest += spent
        name = process_name(cmd)
        each[name] = each.get(name, 0.0) + spent
    busiest = sorted(each.items(), key=lambda kv: -kv[1])[:8]
    return {"worker_cpu_ms_per_job": 1000 * worker / jobs, "others_cpu_ms_per_job": 1000 * rest / jobs,
            "busiest_processes_ms_per_job": {name: round(1000 * spent / jobs, 1) for name, spent in busiest}}


def config_args() -> dict:
    return copy.deepcopy(yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())["applications"][0]["args"])


def served(args, models: Path, image: bytes) -> tuple[float, dict]:
    """(jobs per second, ``cpu_split`` of the run)."""
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
        cpu_before = cpu_seconds()
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
                rate = args.jobs / (time.perf_counter() - start)
                return rate, cpu_split(cpu_before, cpu_seconds(), args.jobs)
            assert r.status_code == 429, r.text
            time.sleep(float(r.headers["Retry-After"]) if args.poll is None else args.poll)
        raise TimeoutError("served run did not finish in 600 s")
    finally:
        serve.shutdown()
        ray.shutdown()


def cpu_line(cpu: dict) -> str:
    return (f"CPU per served job: model worker {cpu['worker_cpu_ms_per_job']:.0f} ms, every other process "
            f"{cpu['others_cpu_ms_per_job']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description="serving overhead on CPU (tiny model)")
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--poll", type=float, default=None,
                    help="seconds before retrying a submit refused with 429 (default: its Retry-After)")
    ap.add_argument("--served-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="served runs, each between two direct runs (the ratio against their mean)")
    ap.add_argument("--out", type=Path, help="write the rates and ratios here as JSON")
    args = ap.parse_args()
    use_loopback_env()
    models = Path(tempfile.mkdtemp(prefix="bench-models-"))
    image = photo()
    if args.served_only:
        rate, cpu = served(args, models, image)
        print(f"served (HTTP + queue + worker): {rate:.3f} jobs/s  ({args.jobs} jobs, 512x512 input, tiny at 256^2)"
              f"  {cpu_line(cpu)}")
        return
    rate, cpu_ms = direct(args, models, image)
    directs, direct_cpu, serveds, ratios, cpus = [rate], [cpu_ms], [], [], []
    for _ in range(args.rounds):
        rate, cpu = served(args, models, image)
        serveds.append(rate)
        cpus.append(cpu)
        if args.rounds > 1:  # each served run also against the direct run after it
            rate, cpu_ms = direct(args, models, image)
            directs.append(rate)
            direct_cpu.append(cpu_ms)
        around = directs[-2:]
        ratios.append(serveds[-1] / (sum(around) / len(around)))
        print(f"direct: {' / '.join(f'{d:.3f}' for d in around)} jobs/s  served (HTTP + queue + worker): "
              f"{serveds[-1]:.3f} jobs/s  ratio served/direct: {ratios[-1]:.3f}  "
              f"({args.jobs} jobs, 512x512 input, tiny at 256^2)\n  {cpu_line(cpu)}; "
              f"direct {' / '.join(f'{c:.0f}' for c in direct_cpu[-2:])} ms", flush=True)
    if args.rounds > 1:
        print(f"ratios: {' / '.join(f'{r:.2f}' for r in ratios)}; all served jobs against all direct ones: "
              f"{sum(serveds) / len(serveds) / (sum(directs) / len(directs)):.3f}")
    if args.out:
        args.out.write_text(json.dumps({"jobs": args.jobs, "direct_jobs_per_s": directs,
                                        "direct_cpu_ms_per_job": direct_cpu, "served_jobs_per_s": serveds,
                                        "ratios": ratios, "served_cpu": cpus}, indent=1))


if __name__ == "__main__":
    main()
