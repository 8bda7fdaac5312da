"""Workers that follow the queue against fixed workers, on this machine's three-node cluster with
faked GPUs (``tests/autoscaling_check.py``'s): the seconds from a submit to the first step when no
worker is up (a cold start, tiny model), and the jobs per minute of a burst of ten jobs arriving at
an idle server that autoscales to two workers from zero and from one kept warm, against two workers
always up.

    .venv/bin/python bench/autoscaling.py --rounds 2 --out bench/results/autoscaling-cpu-DATE.json

Each round, one app after the other: autoscaled from zero (its burst waits for the first worker's
start and the second's), autoscaled with ``min_workers: 1`` (one worker ready before its burst, the
second started by it), and fixed (two workers, ready before its burst). One JSON
object; ``--out`` writes it too.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "1.0")  # as make test runs it

from ray import serve  # noqa: E402

from tests.autoscaling_check import SCALING, FakeGpuCluster, burst  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rounds = []
    with FakeGpuCluster() as cluster:
        for i in range(args.rounds):
            st = cluster.deploy(f"auto{i}", {"autoscaling": SCALING})
            st.until("no worker up", lambda: st.health()["autoscaling"]["workers"] == 0, 60)
            auto = burst(st, args.jobs, seed=100 * i)
            serve.delete(f"auto{i}", _blocking=True)
            st = cluster.deploy(f"warm{i}", {"autoscaling": {**SCALING, "min_workers": 1}})
            st.until("one worker ready", lambda: [w["state"] for w in st.health()["workers"]] == ["ready"], 240, 0.5)
            warm = burst(st, args.jobs, seed=100 * i)
            serve.delete(f"warm{i}", _blocking=True)
            st = cluster.deploy(f"fixed{i}", {"num_replicas": 2})
            st.until("two workers ready", lambda: sum(w["state"] == "ready" for w in st.health()["workers"]) == 2,
                     240, 0.5)
            fixed = burst(st, args.jobs, seed=100 * i)
            serve.delete(f"fixed{i}", _blocking=True)
            for name, ran in (("autoscaled", auto), ("warm", warm), ("fixed", fixed)):
                assert [s["status"] for s in ran["states"]] == ["completed"] * args.jobs, (name, ran["states"])
            row = {"cold_start_to_first_step_s": auto["first_step_s"], "autoscaled_jobs_per_minute":
                   auto["jobs_per_minute"], "autoscaled_peak_workers": auto["peak_workers"],
                   "warm_jobs_per_minute": warm["jobs_per_minute"], "warm_peak_workers": warm["peak_workers"],
                   "fixed_jobs_per_minute": fixed["jobs_per_minute"], "fixed_first_step_s": fixed["first_step_s"],
                   "ratio": round(auto["jobs_per_minute"] / fixed["jobs_per_minute"], 3),
                   "warm_ratio": round(warm["jobs_per_minute"] / fixed["jobs_per_minute"], 3)}
            print(json.dumps({"round": i + 1, **row}), flush=True)
            rounds.append(row)
    out = {"when": time.strftime("%Y-%m-%d %H:%M"), "jobs": args.jobs, "scaling": SCALING, "rounds": rounds,
           "median_ratio": statistics.median(r["ratio"] for r in rounds),
           "median_warm_ratio": statistics.median(r["warm_ratio"] for r in rounds),
           "median_cold_start_to_first_step_s": statistics.median(r["cold_start_to_first_step_s"] for r in rounds)}
    print(json.dumps(out))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
