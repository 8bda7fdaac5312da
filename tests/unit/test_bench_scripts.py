"""The GPU benchmark cannot run here, but its code path can: --smoke runs it on CPU at toy size."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_edit_benchmark_runs_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_edit.py"), "--smoke", "--runs", "1",
                           "--serving", "--jobs", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["presets"]) == {"qwen-4step", "qwen-8step", "qwen-40step"}
    four, forty = result["presets"]["qwen-4step"], result["presets"]["qwen-40step"]
    assert four["transformer_forwards"] == 4 and forty["transformer_forwards"] == 80  # true CFG: 2 per step
    assert len(forty["step_seconds"]) == 40
    assert {"text_encoder", "vae_encode", "vae_decode", "png_encode", "transformer"} <= set(four["stages_seconds"])
    assert result["transformer_flop_per_forward"] > 0

    serving = result["serving"]  # the service's EditEngine on the same model: switches, restore, a queue
    assert serving["fused_weights_differ_from_base"] is True  # so the fingerprint can tell weights apart
    assert serving["base_weights_identical_after_restore"] is True
    assert serving["pixels_identical_after_round_trip"] is True
    assert len(serving["switch_seconds"]) == 5
    assert serving["queue_4step"]["prepared_ahead"] is True
    assert serving["queue_4step_not_prepared_ahead"]["prepared_ahead"] is False
    queue = serving["queue_4step"]
    done = queue["submit_to_completed_seconds"]
    assert queue["jobs"] == 3 and len(done) == 3 and done == sorted(done) and done[0] > 0
    assert 0 < queue["generating_share_of_wall"] <= 1


def test_gpu_edit_benchmark_holds_the_model_in_a_profile(tmp_path):
    """--profile int8 (the quantized profile a CPU runs): weights quantized in place with the service's
    own code, the plan reported beside each preset, LoRAs as adapters in the serving section."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_edit.py"), "--smoke", "--runs", "1",
                           "--presets", "qwen-4step", "--profile", "int8", "--serving", "--jobs", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["profile"] == "int8" and "serving_error" not in result
    assert result["presets"]["qwen-4step"]["planned_peak_gib"] > 20  # the published model's plan
    serving = result["serving"]
    assert serving["profile"] == "int8"
    assert serving["pixels_identical_after_round_trip"] is True
    assert serving["base_weights_identical_after_restore"] is True  # the int8 weights as stored


def test_gpu_edit_benchmark_runs_a_random_gguf_transformer_and_the_step_cache(tmp_path):
    """--gguf Q4_0: the transformer as random GGUF blocks (diffusers' GGUFLinear), LoRAs as adapters
    with an exact round trip; --step-cache: the 40-step preset again with the cache, fewer full steps."""
    out = tmp_path / "gguf.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_edit.py"), "--smoke", "--runs", "1",
                           "--presets", "qwen-4step,qwen-40step", "--gguf", "Q4_0", "--step-cache", "--serving",
                           "--jobs", "2", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["gguf"] == "Q4_0" and "serving_error" not in result
    assert result["serving"]["pixels_identical_after_round_trip"] is True
    cache = result["step_cache"]
    assert cache["steps"] == 40 and 8 <= cache["full_steps"] < 40 and cache["speedup"] > 0
    # planned for the published model with a Q4_0 transformer: well under the bf16 one
    assert 15 < result["presets"]["qwen-4step"]["planned_peak_gib"] < 40


def test_the_gpu_proof_runs_each_profile_in_its_own_process_and_sums_them_up(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_proof.py"), "--smoke", "--out-dir", str(tmp_path),
                           "--only", "gguf-Q4_0-nf4-24gib,bf16", "--budget", "240"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert [r["run"] for r in summary] == ["gguf-Q4_0-nf4-24gib", "bf16"]
    assert summary[0]["gguf"] == "Q4_0" and summary[0]["profile"] == "nf4" and not summary[0]["error"]
    assert all(r["seconds_per_edit"]["qwen-4step"] > 0 for r in summary)
    assert "gguf-Q4_0-nf4-24gib" in proc.stdout.splitlines()[-2]  # the table, one row per run


def test_serving_overhead_splits_the_cpu_between_the_worker_and_every_other_process(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from serving_overhead import cpu_split

    worker = "ray::ServeReplica:app:ModelWorker"
    raylet = "/venv/ray/core/src/ray/raylet/raylet --python_worker_command=/venv/bin/python /venv/setup_worker.py"
    before = {1: (worker, 1.0), 2: (raylet, 0.5)}
    after = {1: (worker, 4.0), 2: (raylet, 0.8), 3: ("/venv/bin/python -u /venv/ray/_private/log_monitor.py", 0.3)}
    split = cpu_split(before, after, jobs=3)
    assert round(split["worker_cpu_ms_per_job"]) == 1000
    assert round(split["others_cpu_ms_per_job"]) == 200  # a process started meanwhile counts from zero
    assert split["busiest_processes_ms_per_job"] == {worker: 1000.0, "raylet": 100.0, "log_monitor.py": 100.0}
