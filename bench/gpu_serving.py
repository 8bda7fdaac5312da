"""The serving engine on the full-size model: preset switches, exact restore, and a queue of jobs.

    python3 bench/gpu_serving.py [--jobs 10] [--lora-rank 64] [--out FILE.json]
    (or ``bench/gpu_edit.py --serving``, which shares one model build with the per-stage timings)

On the random-weight pipeline of ``gpu_model.py`` (the one ``gpu_edit.py`` times), this drives the
project's own ``EditEngine`` (the code a model worker runs) with random LoRA files in the Lightning key format at
the real files' size (rank 64 on every linear layer of the 60 blocks):

- preset switches: base -> qwen-4step (LoRA read, checked, fused), -> qwen-40step (base restored),
  -> qwen-8step, -> qwen-4step (LoRA from memory), each timed;
- exact restore: after 4step -> 40step -> 8step -> 4step the transformer's weights hash the same as
  before and a 4-step edit gives identical pixels;
- a full queue: ``--jobs`` qwen-4step jobs, all submitted at t=0, run the way the model worker runs
  them (upload decoded and image generated in one thread, PNG encoded in another while the next job
  generates); reports each job's submit-to-completed time, seconds per job, the share of the wall time
  spent generating, and the GPU's utilisation sampled through NVML.

Needs torch, diffusers, transformers, peft and pydantic (the presets are the service's own models);
no Ray, no FastAPI. ``--smoke`` runs it on CPU at toy size (used by the tests).
"""

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_edit / gpu_serving beside

BASE = "random:full-size"
INSTRUCTION = "make the sky blue and add clouds"


def presets(lora4: Path, lora8: Path, size: int, gguf: str | None = None) -> dict:
    from serve_app.presets import WeightFile, Preset

    common = dict(base=BASE, resolution=size, transformer_gguf=gguf_file(gguf))
    return {
        "qwen-4step": Preset(name="qwen-4step", scheduler="lightning", steps=4, cfg_scale=1.0,
                             lora=WeightFile(path=str(lora4)), nominal_seconds=2, **common),
        "qwen-8step": Preset(name="qwen-8step", scheduler="lightning", steps=8, cfg_scale=1.0,
                             lora=WeightFile(path=str(lora8)), nominal_seconds=4, **common),
        "qwen-40step": Preset(name="qwen-40step", steps=40, cfg_scale=4.0, nominal_seconds=30, **common),
    }


def gguf_file(gguf: str | None):
    """The (never read) GGUF file the random GGUF transformer stands for: the presets and the engine
    name the same one, so they share the held weights."""
    from serve_app.presets import WeightFile

    return WeightFile(path=f"/random/full-size-{gguf}.gguf") if gguf else None


def fingerprint(module) -> list[int]:
    """One integer per parameter from its raw bits: equal lists mean (barring a collision) equal weights.
    Quantized weights are read as stored (torchao's ``qdata``; bitsandbytes' packed bytes)."""
    import torch

    out = []
    with torch.no_grad():
        for p in module.parameters():
            raw = getattr(p, "qdata", None)
            raw = (p if raw is None else raw).detach()
            if hasattr(raw, "as_tensor"):  # a GGUF weight: its packed blocks, as a plain tensor
                raw = raw.as_tensor()
            width = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[raw.element_size()]
            bits = raw.view(width)
            weights = torch.arange(1, bits.numel() + 1, device=bits.device, dtype=torch.int64) % 7919
            out.append(int((bits.flatten().to(torch.int64) * weights).sum()))
    return out


def photo(size: int) -> bytes:
    """A photo-like PNG upload: smooth colour gradients with some noise (compresses like a photo)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([160 * x + 60, 120 * y + 80, 200 - 100 * x * y], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


class GpuSampler:
    """NVML's utilisation (share of time a kernel ran) sampled in a thread; None where NVML is absent."""

    def __init__(self, device: str, period: float = 0.1):
        self.samples: list[int] = []
        self.period, self._stop = period, threading.Event()
        self._thread = None
        if device == "cuda":
            try:
                import torch

                torch.cuda.utilization()  # raises without pynvml / NVML
                self._thread = threading.Thread(target=self._run, daemon=True)
            except Exception as exc:
                print(f"NVML unavailable ({type(exc).__name__}); no utilisation samples", file=sys.stderr)

    def _run(self):
        import torch

        while not self._stop.is_set():
            self.samples.append(torch.cuda.utilization())
            time.sleep(self.period)

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def mean(self):
        return round(statistics.mean(self.samples), 1) if self.samples else None


def run_queue(engine, preset, upload: bytes, jobs: int, sync, ahead: bool = True) -> dict:
    """``jobs`` jobs submitted at t=0, run as the model worker runs them: generate (decode included)
    in one thread, PNG encoding handed to another so the next job's generation starts at once, and
    (``ahead``, the worker's ``prepare_ahead``) the next job prepared in a third thread from the
    start of the current job's last step."""
    from serve_app import images

    engine.ensure(preset)
    engine.run(preset, [upload], INSTRUCTION, seed=0)  # warm
    t = time.perf_counter()
    images.decode(upload)
    decode_s = time.perf_counter() - t
    done, generate_s = [0.0] * jobs, []

    def finish(i, image):
        png = engine.encode(image)
        done[i] = time.perf_counter() - t0
        return len(png)

    with ThreadPoolExecutor(1) as encoder, ThreadPoolExecutor(1) as preparer, GpuSampler(engine.device) as gpu:
        sync()
        t0 = time.perf_counter()
        futures, prepared = [], None
        for i in range(jobs):
            pending = []

            def on_step(step, total, last=i == jobs - 1, pending=pending):
                if ahead and not last and not pending and step == max(1, total - 1):
                    pending.append(preparer.submit(engine.prepare, preset, [upload], INSTRUCTION))

            g = time.perf_counter()
            image = engine.generate(preset, [upload], INSTRUCTION, seed=i + 1, on_step=on_step, prepared=prepared)
            generate_s.append(time.perf_counter() - g)
            prepared = pending[0].result() if pending else None
            futures.append(encoder.submit(finish, i, image))
        sizes = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    return {
        "jobs": jobs, "prepared_ahead": ahead, "wall_seconds": round(wall, 3), "seconds_per_job": round(wall / jobs, 3),
        "submit_to_completed_seconds": [round(x, 3) for x in done],
        "generate_seconds_median": round(statistics.median(generate_s), 3),
        "generating_share_of_wall": round(sum(generate_s) / wall, 4),
        "gpu_utilisation_percent_mean": gpu.mean(), "gpu_utilisation_samples": len(gpu.samples),
        "upload_png_bytes": len(upload), "upload_decode_seconds": round(decode_s, 4),
        "result_png_bytes_median": int(statistics.median(sizes)),
    }


def measure(pipe, device: str, size: int, jobs: int, lora_rank: int, attention: str, workdir: Path,
            sync=lambda: None, profile=None, gguf: str | None = None) -> dict:
    """Preset switches, exact restore and a full queue through ``EditEngine`` on ``pipe``, held as
    ``profile`` says (default bf16: LoRAs fused; quantized profiles: LoRAs as adapters)."""
    from serve_app.worker.engine import EditEngine
    from serve_app.worker.tiny_model import random_lightning_lora

    dtype = pipe.vae.dtype  # the compute dtype (a quantized transformer's parameters are not)
    t = time.perf_counter()
    lora4 = random_lightning_lora(pipe.transformer, workdir / "lightning-4step.safetensors", rank=lora_rank, seed=1,
                                scale=0.02, dtype=dtype, device=device)
    lora8 = random_lightning_lora(pipe.transformer, workdir / "lightning-8step.safetensors", rank=lora_rank, seed=2,
                                scale=0.02, dtype=dtype, device=device)
    out = {"lora_rank": lora_rank, "lora_file_mb": round(lora4.stat().st_size / 2**20, 1),
           "lora_files_made_seconds": round(time.perf_counter() - t, 1)}
    reg = presets(lora4, lora8, size, gguf)
    engine = EditEngine(str(workdir / "models"), device=device, attention_backend=attention,
                        profile=profile.name if profile else "bf16")
    engine.use_pipeline(pipe, BASE, profile, gguf_file(gguf))
    out["profile"] = engine.held.name
    out["attention_backend"] = engine.attention_backend
    base_print = fingerprint(pipe.transformer)
    upload = photo(size)

    def switch(name):
        sync()
        t = time.perf_counter()
        engine.ensure(reg[name])
        sync()
        return round(time.perf_counter() - t, 3)

    def edit():
        return engine.run(reg["qwen-4step"], [upload], INSTRUCTION, seed=7).png

    switches = {"base->4step (LoRA read, checked, applied; for a fuse the base copied aside)": switch("qwen-4step")}
    out["fused_weights_differ_from_base"] = fingerprint(pipe.transformer) != base_print  # the check can fail
    before = edit()
    switches["4step->40step (base restored)"] = switch("qwen-40step")
    restored = fingerprint(pipe.transformer) == base_print
    switches["40step->8step (LoRA read, checked, applied)"] = switch("qwen-8step")
    switches["8step->4step (LoRA from memory)"] = switch("qwen-4step")
    after = edit()
    switches["4step->40step again"] = switch("qwen-40step")
    out["switch_seconds"] = switches
    out["base_weights_identical_after_restore"] = restored and fingerprint(pipe.transformer) == base_print
    out["pixels_identical_after_round_trip"] = before == after
    print(json.dumps({"serving": out}), flush=True)
    out["queue_4step"] = run_queue(engine, reg["qwen-4step"], upload, jobs, sync)
    print(json.dumps({"queue_4step": out["queue_4step"]}), flush=True)
    out["queue_4step_not_prepared_ahead"] = run_queue(engine, reg["qwen-4step"], upload, jobs, sync, ahead=False)
    print(json.dumps({"queue_4step_not_prepared_ahead": out["queue_4step_not_prepared_ahead"]}), flush=True)
    out["_engine"], out["_presets"], out["_upload"] = engine, reg, upload  # for a compiled re-run
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--lora-rank", type=int, default=64)
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU, to check the script itself")
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch
    from gpu_model import build_pipeline  # beside this script

    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke to check the script on CPU", file=sys.stderr)
        return 2
    pipe, _, build_s = build_pipeline(device, torch.float32 if device == "cpu" else torch.bfloat16, args.smoke)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(pipe, device, 64 if args.smoke else args.size, args.jobs,
                         4 if args.smoke else args.lora_rank, args.attention, Path(tmp), sync)
    result = {k: v for k, v in result.items() if not k.startswith("_")}
    result["build_seconds"] = round(build_s, 1)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
