"""What a co-tenant's CPU costs the CPU pipeline: ``serving_overhead``'s direct loop (the tiny model on
both cores, no Ray) alone and beside a burner process that takes a given share of one core in short
bursts, as the serving processes do (a request parsed, a queue call answered), alternating, one run.

    .venv/bin/python bench/interference.py [--jobs 30] [--shares 0.1,0.2,0.3] [--rounds 2] [--out FILE]

Each loaded run is set against the mean of the runs alone on either side of it (this machine's speed
drifts within minutes). Prints, per share asked: the share of a core the burner really took, the
pipeline's jobs per second, and its loss against running alone. Loopback-free, bounded in jobs.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from loopback import use_loopback_env  # bench/, beside this script
from serving_overhead import direct, photo

BURST_S = 0.001  # one burst of work; the serving stack's calls cost about a millisecond each
BURNER = """
import sys, time
burst, pause = float(sys.argv[1]), float(sys.argv[2])
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < burst:
        pass
    time.sleep(pause)
"""


def loaded(args, models: Path, image: bytes, share: float) -> tuple[float, float]:
    """(jobs per second, the share of one core the burner took meanwhile)."""
    pause = BURST_S / share - BURST_S
    burner = subprocess.Popen([sys.executable, "-c", BURNER, str(BURST_S), str(pause)])
    try:
        proc = psutil.Process(burner.pid)
        time.sleep(0.2)
        before, start = sum(proc.cpu_times()[:2]), time.perf_counter()
        rate, _ = direct(args, models, image)
        took = (sum(proc.cpu_times()[:2]) - before) / (time.perf_counter() - start)
    finally:
        burner.kill()
        burner.wait()
    return rate, took


def main() -> None:
    ap = argparse.ArgumentParser(description="the CPU pipeline beside a co-tenant's CPU load")
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--shares", default="0.1,0.2,0.3", help="shares of one core the burner asks for")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    use_loopback_env()
    models = Path(tempfile.mkdtemp(prefix="bench-models-"))
    image = photo()
    shares = [float(s) for s in args.shares.split(",")]
    alone = [direct(args, models, image)[0]]
    results = {s: [] for s in shares}
    for _ in range(args.rounds):
        for share in shares:
            rate, took = loaded(args, models, image, share)
            alone.append(direct(args, models, image)[0])
            base = (alone[-2] + alone[-1]) / 2
            results[share].append({"jobs_per_s": rate, "burner_core_share": took, "alone_jobs_per_s": base,
                                   "loss": 1 - rate / base})
            print(f"burner asked {share:.2f} of a core, took {took:.3f}: {rate:.3f} jobs/s against {base:.3f} "
                  f"alone: {100 * (1 - rate / base):.1f} % fewer", flush=True)
    for share, runs in results.items():
        took = sum(r["burner_core_share"] for r in runs) / len(runs)
        loss = sum(r["loss"] for r in runs) / len(runs)
        print(f"share {share:.2f} (took {took:.3f} of a core = {took / 2:.1%} of the machine): "
              f"{loss:.1%} fewer jobs per second (mean of {len(runs)})")
    if args.out:
        args.out.write_text(json.dumps({"jobs": args.jobs, "burst_s": BURST_S, "alone_jobs_per_s": alone,
                                        "loaded": {str(s): r for s, r in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
