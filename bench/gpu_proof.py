"""The GPU proof of every memory/precision profile, in one command that fits one 10-minute device call.

    python3 bench/gpu_proof.py --out-dir $OUT [--budget 540] [--only NAME,...] [--smoke]

Runs ``bench/gpu_edit.py`` once per profile, each in its own process (a fresh CUDA context, so one
profile's memory cap and allocator state never carry into the next), on the full-size architecture
with random weights built on the device in each format (bf16, torchao FP8/int8, bitsandbytes NF4,
random GGUF blocks of the published types: no download, no slow quantization pass), at 1024x1024:
seconds per edit per preset, peak memory beside the plan, the 24 GB profiles under a 24 GiB cap
(an allocation past it raises: a run that completes proves the fit), the step cache's speed-up on
the 40-step preset, and a full queue of 10 qwen-4step jobs with NVML busy share on the fastest profile.

Each run's JSON goes to ``<out-dir>/<name>.json``; ``<out-dir>/summary.json`` and the printed table
say, per run, the profile, the GGUF type, seconds per edit of each preset, peak and planned GiB, and
what was skipped for lack of time. A run that fails is recorded with its last lines and the next
one starts. ``--smoke``: the same on CPU at toy size (the tests run it), without caps.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALL = "qwen-4step,qwen-8step,qwen-40step"
# name, gpu_edit.py arguments, the least seconds it needs to say anything (start, build, one edit).
# First what the targets are about, then the rest of the profiles, quickest first.
RUNS = [
    ("fp8", ["--profile", "fp8", "--presets", "qwen-4step,qwen-40step", "--step-cache", "--serving", "--jobs", "10"],
     60),
    ("gguf-Q4_K-nf4-24gib", ["--profile", "nf4", "--gguf", "Q4_K", "--memory-cap-gib", "24", "--presets", ALL], 50),
    ("nf4-24gib", ["--profile", "nf4", "--memory-cap-gib", "24", "--presets", ALL], 50),
    ("gguf-Q4_0-nf4-24gib", ["--profile", "nf4", "--gguf", "Q4_0", "--memory-cap-gib", "24", "--presets", "qwen-4step"],
     40),
    ("gguf-Q5_K-nf4-lean-24gib", ["--profile", "nf4-lean", "--gguf", "Q5_K", "--memory-cap-gib", "24",
                                  "--presets", "qwen-4step"], 40),
    ("bf16", ["--profile", "bf16", "--presets", "qwen-4step"], 30),
    ("int8", ["--profile", "int8", "--presets", "qwen-4step"], 40),
    ("fp8-lite-32gib", ["--profile", "fp8-lite", "--memory-cap-gib", "32", "--presets", "qwen-4step"], 40),
    ("nf4-lean-24gib", ["--profile", "nf4-lean", "--memory-cap-gib", "24", "--presets", "qwen-4step"], 40),
    ("nf4-offload-16gib", ["--profile", "nf4-offload", "--memory-cap-gib", "16", "--presets", "qwen-4step"], 50),
    ("gguf-Q8_0-nf4-offload-24gib", ["--profile", "nf4-offload", "--gguf", "Q8_0", "--memory-cap-gib", "24",
                                     "--presets", "qwen-4step"], 50),
    ("bf16-stream-24gib", ["--profile", "bf16-stream", "--memory-cap-gib", "24", "--presets", "qwen-4step"], 60),
]
SMOKE_SKIP = ("--memory-cap-gib", "--serving", "--jobs")  # CPU: no caps; the queue is covered by gpu_edit's own test


def _smoke_args(args: list[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in SMOKE_SKIP:
            skip = a != "--serving"
            continue
        out.append(a)
    return out + ["--smoke", "--runs", "1"]


def summarize(name: str, data: dict) -> dict:
    presets = data.get("presets", {})
    return {"run": name, "profile": data.get("profile"), "gguf": data.get("gguf"),
            "memory_cap_gib": data.get("memory_cap_gib"),
            "seconds_per_edit": {p: v.get("seconds_per_edit") for p, v in presets.items()},
            "peak_reserved_gib": {p: v.get("peak_reserved_gib") for p, v in presets.items()},
            "planned_peak_gib": {p: v.get("planned_peak_gib") for p, v in presets.items()},
            "step_cache_speedup": (data.get("step_cache") or {}).get("speedup"),
            "queue_4step": {k: v for k, v in ((data.get("serving") or {}).get("queue_4step") or {}).items()
                            if k in ("seconds_per_job", "gpu_utilisation_percent_mean")},
            "skipped": data.get("skipped", []), "error": data.get("error")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--budget", type=float, default=540, help="seconds for all runs together")
    ap.add_argument("--only", default="", help="comma-separated run names (default: all, in order)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU, to check the script itself")
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [n.strip() for n in args.only.split(",") if n.strip()]
    runs = [r for r in RUNS if not wanted or r[0] in wanted]
    started, rows = time.monotonic(), []
    for i, (name, run_args, least) in enumerate(runs):
        left = args.budget - (time.monotonic() - started)
        reserve = sum(r[2] for r in runs[i + 1:])  # what the later runs need at least
        share = max(least, left - reserve) if i + 1 < len(runs) else left
        if left < least:
            rows.append({"run": name, "skipped": [f"not started: {left:.0f}s left of the budget"]})
            continue
        share = min(share, left)
        command = [sys.executable, str(HERE / "gpu_edit.py"), *(_smoke_args(run_args) if args.smoke else run_args),
                   "--deadline", f"{max(10.0, share - 15):.0f}", "--out", str(out / f"{name}.json")]
        print(f"--- {name} ({share:.0f}s of {left:.0f}s left): {' '.join(command[1:])}", flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=share)
            tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
            error = None if done.returncode == 0 else f"exit {done.returncode}: " + " | ".join(tail)[-1500:]
        except subprocess.TimeoutExpired:
            error = f"stopped after its {share:.0f}s share of the budget"
        path = out / f"{name}.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data["error"] = error
        path.write_text(json.dumps(data, indent=2))
        rows.append(summarize(name, data))
        print(json.dumps(rows[-1]), flush=True)
        (out / "summary.json").write_text(json.dumps({"runs": rows, "seconds": round(time.monotonic() - started, 1)},
                                                     indent=2))
    (out / "summary.json").write_text(json.dumps({"runs": rows, "seconds": round(time.monotonic() - started, 1)},
                                                 indent=2))
    print(f"{'run':28} {'4step s':>8} {'8step s':>8} {'40step s':>9} {'peak GiB':>9} {'plan GiB':>9}  notes")
    for row in rows:
        secs = row.get("seconds_per_edit", {})
        peak = max([v for v in row.get("peak_reserved_gib", {}).values() if v] or [0])
        plan = max([v for v in row.get("planned_peak_gib", {}).values() if v] or [0])
        notes = "; ".join(filter(None, [row.get("error"), *row.get("skipped", [])]))[:120]
        print(f"{row['run']:28} {secs.get('qwen-4step') or '-':>8} {secs.get('qwen-8step') or '-':>8} "
              f"{secs.get('qwen-40step') or '-':>9} {peak:>9} {plan:>9}  {notes}")
    return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
