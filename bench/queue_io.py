"""Status latency on the queue replica while large results and inputs are written (CPU, no Ray).

    .venv/bin/python bench/queue_io.py [--jobs 8] [--result-mb 24] [--input-mb 8]

The queue's own class runs in this process on one asyncio loop, as in its Serve replica. A poller
asks ``status`` every 2 ms (each answer timed from when it was asked); meanwhile ``--jobs`` jobs go through: submitted with an input of
``--input-mb`` (committed to SQLite, fsync'd), claimed, and completed with a result of
``--result-mb`` (written and fsync'd). Reports the status latency (p50, p99, max) while that I/O
runs, and with the queue idle. A status answer that waits behind a file or database write on the
event loop shows up as a p99 and max near that write's duration.
"""

import argparse
import asyncio
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, os.environ.get("QUEUE_IO_TREE", str(Path(__file__).resolve().parents[1])))


async def make(deployment, *init_args):
    cls = deployment.func_or_class
    obj = cls.__new__(cls)
    await cls.__init__(obj, *init_args)
    return obj


def quantiles(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 2), "max_ms": round(ms[-1], 2)}


async def run(args) -> dict:
    from serve_app.auth import Caller
    from serve_app.queue.actor import QueueActor

    admin = Caller("bench", admin=True)
    if "request" in inspect.signature(QueueActor.func_or_class.submit).parameters:
        from serve_app.contract.protocol import JobDone, JobRequest

        def submit(job_id, images, instruction, seed):
            return queue.submit(JobRequest(job_id, images, instruction, seed, "tiny"), admin)

        def done(worker, job_id, png):
            return queue.job_done(worker, JobDone(job_id, png, 0.1))
    else:  # the code before the typed protocol (how "before" in BENCHMARKS.md was run)
        def submit(job_id, images, instruction, seed):
            return queue.submit(job_id, images, instruction, seed, "tiny", None, admin)

        def done(worker, job_id, png):
            return queue.job_done(worker, job_id, png, 0.1)

    with tempfile.TemporaryDirectory() as tmp:
        args_ = {"state_dir": tmp, "max_queue_size": 10}
        try:
            from serve_app.config import build_settings
            queue_settings = build_settings(args_)
        except ImportError:  # the code before settings were built in config.py
            from serve_app import deployments
            queue_settings, *_ = deployments.app_settings(args_)
        queue = await make(QueueActor, queue_settings)
        inputs, result = os.urandom(args.input_mb << 20), os.urandom(args.result_mb << 20)  # before timing
        first, _ = await submit(str(uuid.uuid4()), [b"x"], "probe", 1)
        first_id = first["job_id"] if isinstance(first, dict) else first.job_id
        latencies, stop = [], asyncio.Event()

        async def poll():
            # A station asks every 2 ms; each answer is timed from when it was asked, so time spent
            # waiting for the event loop (blocked by a write) counts, as it does for a real request.
            due = time.perf_counter()
            while not stop.is_set():
                due += 0.002
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await queue.status(first_id, admin)
                now = time.perf_counter()
                latencies.append(now - due)
                due = max(due, now - 0.002)  # a late answer does not queue up asks behind it

        poller = asyncio.create_task(poll())
        await asyncio.sleep(1.0)
        idle = quantiles(latencies)
        latencies.clear()
        await queue.next_task("w", "tiny", 0.1)  # the probe job: processing, held by "w"
        t0 = time.perf_counter()
        for i in range(args.jobs):
            await submit(str(uuid.uuid4()), [inputs], "edit", i)
            task = await queue.next_task("w2", "tiny", 1.0)
            await done("w2", task.job_id, result)
        busy_seconds = time.perf_counter() - t0
        stop.set()
        await poller
        return {"jobs": args.jobs, "input_mb": args.input_mb, "result_mb": args.result_mb,
                "io_seconds": round(busy_seconds, 2), "status_idle": idle, "status_during_io": quantiles(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--result-mb", type=int, default=24)
    ap.add_argument("--input-mb", type=int, default=8)
    result = asyncio.run(run(ap.parse_args()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
