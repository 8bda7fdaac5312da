"""Seconds per edit of the full-size Qwen-Image-Edit-Plus architecture on a GPU, no download.

    python3 bench/gpu_edit.py [--profile bf16] [--memory-cap-gib N] [--presets qwen-4step,...]
                              [--size 1024] [--runs 3] [--compile] [--attention auto] [--out FILE.json]

Builds the real architecture (60-block transformer of ~20 B parameters, Qwen2.5-VL-7B text encoder,
Qwen-Image VAE) with random bf16 weights directly on the GPU: the time per step does not depend on
the weights' values. Then, for each preset at ``--size`` x ``--size``, reports per-stage times (text
encoder, VAE encode, each denoising step, VAE decode, PNG encode), seconds per edit end to end, and
the transformer's achieved TFLOP/s (FLOPs counted by torch's FlopCounterMode) against 790, what an
H100/H200 reaches on plain bf16 matrix products. Needs only torch, diffusers and transformers (and
tokenizers/Pillow, which they bring); the tokenizer is the project's tiny one, which gives the same
prompt length as the real one. ``--smoke`` runs the same code on CPU at toy size (used by the tests).

``--profile NAME`` holds the model as that memory/precision profile does (serve_app/profiles.py): the
random bf16 weights are quantized in place with the same libraries (torchao for fp8/int8,
bitsandbytes NF4 for nf4) and placed with the same offload hooks, then each preset also reports its
peak GPU memory (``torch.cuda.max_memory_reserved``) beside the plan of ``serve_app/worker/memplan.py``.
``--memory-cap-gib 24`` caps the process to 24 GiB once the weights are in their formats
(``torch.cuda.set_per_process_memory_fraction``): a run that completes under the cap proves the fit.
"""

import argparse
import io
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_edit / gpu_serving beside

from serve_app.prompts import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_TEMPLATE, render  # noqa: E402
from serve_app.worker.pipeline_tweaks import set_fastest_attention, working_area  # noqa: E402
from gpu_model import build_pipeline, to_random_gguf  # noqa: E402  (beside this script)

PEAK_TFLOPS = 790.0
PRESETS = {  # steps, true CFG, negative prompt, Lightning scheduler: as the server runs them (issue 23)
    "qwen-4step": (4, 1.0, None, True),
    "qwen-8step": (8, 1.0, None, True),
    "qwen-40step": (40, 4.0, DEFAULT_NEGATIVE_PROMPT, False),
}
PROMPT = render(DEFAULT_PROMPT_TEMPLATE, "make the sky blue and add clouds")  # the served prompt


def to_nf4(module, skip: tuple[str, ...] = ()) -> None:
    """Replace the linear layers of ``module`` by bitsandbytes NF4 layers (double quantization, bf16
    compute) holding its weights, quantized by bitsandbytes as the layers move to the GPU."""
    import bitsandbytes as bnb
    import torch

    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not isinstance(child, torch.nn.Linear) or full in skip:
                continue
            layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                      device="meta")
            layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4", module=layer).to(child.weight.device)
            if child.bias is not None:
                layer.bias = child.bias
            setattr(parent, name, layer)


def apply_profile(pipe, name: str, device: str, cap_gib: float | None, gguf: str | None = None):
    """Hold the bf16 pipeline as profile ``name`` does: quantize its weights in place, cap the
    process's GPU memory, then place it (offload hooks, VAE tiling) with the service's own code.
    ``gguf``: the transformer becomes random blocks of that GGUF type instead (as a preset's
    ``transformer_gguf`` loads), and the profile's text encoder format applies."""
    import torch

    from serve_app.profiles import PROFILES, GiB
    from serve_app.worker import placement

    profile = PROFILES[name]
    if gguf:
        to_random_gguf(pipe.transformer, gguf)
    for component, fmt, skip in (("transformer", "bf16" if gguf else profile.transformer, ()),
                                 ("text_encoder", profile.text_encoder, ("lm_head",))):
        if fmt == "nf4":
            to_nf4(getattr(pipe, component), skip)
        elif fmt != "bf16":
            placement.quantize_module(getattr(pipe, component), fmt, skip)
    if device == "cuda":
        torch.cuda.empty_cache()  # the bf16 originals' blocks: not this profile's memory
        if cap_gib:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GiB / total))
    placement.place(pipe, profile, device)
    return profile


class StageTimer:
    """Wall time per pipeline stage, with the device synchronised at each boundary."""

    def __init__(self, pipe, sync):
        self.sync, self.times, self._originals = sync, {}, []
        for name, module, method in [("text_encoder", pipe.text_encoder, "forward"),
                                     ("vae_encode", pipe.vae, "encode"), ("vae_decode", pipe.vae, "decode"),
                                     ("transformer", pipe.transformer, "forward")]:
            self._wrap(name, module, method)

    def _wrap(self, name, module, method):
        original = getattr(module, method)
        # An offload hook may have set its own forward on the instance: put that one back at the end.
        self._originals.append((module, method, original if method in vars(module) else None))

        def timed(*a, **k):
            self.sync()
            t = time.perf_counter()
            out = original(*a, **k)
            self.sync()
            self.times.setdefault(name, []).append(time.perf_counter() - t)
            return out

        setattr(module, method, timed)

    def reset(self):
        self.times = {}

    def unwrap(self):
        """Put the original methods back (the per-stage syncs would distort later timings)."""
        for module, method, original in self._originals:
            if original is not None:
                setattr(module, method, original)
            elif method in vars(module):
                delattr(module, method)  # the instance attribute set by _wrap; the class's method shows again
        self._originals = []


def transformer_flops(pipe, size: int, device) -> float:
    """FLOPs of one transformer forward at this size with one reference image (counted, not estimated)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    captured = {}
    original = pipe.transformer.forward

    def grab(*a, **k):
        captured.setdefault("call", (a, k))
        raise StopIteration

    pipe.transformer.forward = grab
    try:
        run_edit(pipe, size, "qwen-4step", device, seed=0)
    except StopIteration:
        pass
    finally:
        pipe.transformer.forward = original
    a, k = captured["call"]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        original(*a, **k)
    return float(counter.get_total_flops())


def run_edit(pipe, size, preset, device, seed, steps=None):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from PIL import Image

    from serve_app.worker.schedulers import LIGHTNING_SCHEDULER

    preset_steps, cfg, negative, lightning = PRESETS[preset]
    steps = steps or preset_steps
    base = getattr(pipe, "_bench_default_scheduler", None) or dict(pipe.scheduler.config)
    pipe._bench_default_scheduler = base
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config({**base, **(LIGHTNING_SCHEDULER if lightning else {})})
    image = Image.new("RGB", (size, size), (120, 140, 160))
    with torch.inference_mode(), working_area(size * size):
        out = pipe(image=[image], prompt=PROMPT, negative_prompt=negative,
                   true_cfg_scale=cfg, num_inference_steps=steps, height=size, width=size,
                   generator=torch.Generator(device="cpu").manual_seed(seed)).images[0]
    return out


def time_preset(pipe, size, preset, device, runs, timer, sync, flops, profile=None, gguf=None) -> dict:
    """Median seconds per edit (PNG encode included), per-stage times and per-step times for a preset;
    on a GPU also its peak memory, beside what ``memplan`` planned for it under ``profile``."""
    import torch

    steps_n = PRESETS[preset][0]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_edit(pipe, size, preset, device, seed=0, steps=min(steps_n, 4))  # warm-up, same shapes (and compile)
    per_edit, stages, steps = [], {}, []
    for run in range(runs):
        timer.reset()
        sync()
        t = time.perf_counter()
        image = run_edit(pipe, size, preset, device, seed=run + 1)
        buf = io.BytesIO()
        t_png = time.perf_counter()
        image.save(buf, "PNG", compress_level=1)
        png_s = time.perf_counter() - t_png
        per_edit.append(time.perf_counter() - t)
        for name, values in timer.times.items():
            stages.setdefault(name, []).append(sum(values))
        stages.setdefault("png_encode", []).append(png_s)
        per_step = 2 if PRESETS[preset][1] > 1 and PRESETS[preset][2] is not None else 1  # CFG: 2 forwards
        fwd = timer.times.get("transformer", [])
        steps.append([sum(fwd[i:i + per_step]) for i in range(0, len(fwd), per_step)])
    forwards = len(timer.times.get("transformer", []))
    fwd_mean = statistics.mean(timer.times["transformer"]) if forwards else math.nan
    memory = {}
    if device == "cuda":
        memory = {"peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                  "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if profile is not None:
        memory["planned_peak_gib"] = round(planned_peak(preset, profile, size, gguf) / 2**30, 2)
    return {**memory,
        "runs": runs,
        "seconds_per_edit": round(statistics.median(per_edit), 3),
        "stages_seconds": {k: round(statistics.median(v), 4) for k, v in stages.items()},
        "step_seconds": [round(x, 4) for x in steps[-1]],
        "transformer_forwards": forwards,
        "transformer_forward_seconds": round(fwd_mean, 4),
        "transformer_tflops": round(flops / fwd_mean / 1e12, 1),
        "mfu_vs_790": round(flops / fwd_mean / 1e12 / PEAK_TFLOPS, 3),
    }


def time_step_cache(pipe, size, device, timer, sync, flops, profile, gguf, uncached: dict) -> dict:
    """qwen-40step again with the service's step cache armed (its default settings), against
    ``uncached`` (the same preset's timing without): seconds, the speed-up, steps run in full."""
    from types import SimpleNamespace

    from serve_app.presets import StepCache
    from serve_app.worker import step_cache

    steps, cfg, _, _ = PRESETS["qwen-40step"]
    preset = SimpleNamespace(name="qwen-40step-cached", step_cache=StepCache(), cfg_scale=cfg, steps=steps)
    armed = step_cache.arm(pipe, None, preset)
    try:
        cached = time_preset(pipe, size, "qwen-40step", device, 1, timer, sync, flops, profile, gguf)
        full = step_cache.full_steps(pipe, armed, steps)
    finally:
        step_cache.disarm_unless(pipe, armed, SimpleNamespace(step_cache=None))
    return {"settings": StepCache().model_dump(), "uncached_seconds": uncached["seconds_per_edit"],
            "cached_seconds": cached["seconds_per_edit"], "full_steps": full, "steps": steps,
            "speedup": round(uncached["seconds_per_edit"] / cached["seconds_per_edit"], 2),
            **{k: v for k, v in cached.items() if k.startswith("peak")}}


def planned_peak(preset: str, profile, size: int, gguf: str | None = None) -> int:
    """What serve_app/worker/memplan.py plans for this benchmark's preset (one reference image, a rank-64
    LoRA for the Lightning presets) on the published architecture."""
    from types import SimpleNamespace

    from serve_app.worker import memplan

    lora = SimpleNamespace(path=None, local_path=lambda: None) if PRESETS[preset][3] else None  # not on disk
    file = gguf and SimpleNamespace(name=f"random-{gguf}.gguf", local_path=lambda: None)  # planned by its type
    return memplan.plan(SimpleNamespace(name=preset, resolution=size, lora=lora, transformer_gguf=file), profile,
                        images=1).peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="bf16", help="memory/precision profile (serve_app/profiles.py)")
    ap.add_argument("--memory-cap-gib", type=float, default=None,
                    help="cap the process's GPU memory to this once the weights are in their formats")
    ap.add_argument("--gguf", default=None, help="the transformer as random blocks of this GGUF type (Q4_0, Q4_K, "
                                                 "Q8_0, ...): a preset's transformer_gguf; the profile sets the rest")
    ap.add_argument("--step-cache", action="store_true",
                    help="then time qwen-40step again with the step cache (presets.StepCache defaults) armed")
    ap.add_argument("--presets", default="qwen-4step,qwen-8step,qwen-40step")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--long-runs", type=int, default=1, help="runs for presets of more than 10 steps")
    ap.add_argument("--serving", action="store_true",
                    help="then drive the service's EditEngine on this model (bench/gpu_serving.py)")
    ap.add_argument("--jobs", type=int, default=10, help="queue length for --serving")
    ap.add_argument("--compile", action="store_true",
                    help="then compile the repeated transformer blocks and time qwen-4step (and the queue) again")
    ap.add_argument("--attention", default="auto", help="diffusers attention backend, or auto")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds: skip later sections that would not finish in time (results so far are kept)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU, to check the script itself")
    ap.add_argument("--out", help="write the results as JSON here too (rewritten after each section)")
    args = ap.parse_args()

    import torch

    started = time.perf_counter()
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.smoke:
        print("no CUDA device: run with --smoke to check the script on CPU", file=sys.stderr)
        return 2
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    size = 64 if args.smoke else args.size
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    pipe, params, build_s = build_pipeline(device, dtype, args.smoke)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": size,
              "transformer_params_b": round(params / 1e9, 2), "build_seconds": round(build_s, 1),
              "torch": torch.__version__, "presets": {}, "skipped": []}

    def save():
        if args.out:
            clean = {k: v for k, v in result.items() if k != "serving"}
            if "serving" in result:
                clean["serving"] = {k: v for k, v in result["serving"].items() if not k.startswith("_")}
            Path(args.out).write_text(json.dumps(clean, indent=2))

    def time_left(needed: float, what: str) -> bool:
        left = args.deadline - (time.perf_counter() - started)
        if args.deadline and left < needed:
            result["skipped"].append(f"{what} (needs ~{needed:.0f}s, {left:.0f}s left)")
            print(f"skipping {what}: ~{needed:.0f}s needed, {left:.0f}s left", file=sys.stderr, flush=True)
            save()
            return False
        return True

    result["attention_backend"] = (set_fastest_attention(pipe.transformer, args.attention)
                                   if device == "cuda" else "native")
    flops = transformer_flops(pipe, size, device)
    result["transformer_flop_per_forward"] = flops
    result["transformer_tflop_per_forward"] = round(flops / 1e12, 3)
    t = time.perf_counter()
    profile = apply_profile(pipe, args.profile, device, args.memory_cap_gib, args.gguf)  # FLOPs counted in bf16
    result.update(profile=profile.name, gguf=args.gguf, profile_seconds=round(time.perf_counter() - t, 1),
                  memory_cap_gib=args.memory_cap_gib)
    if device == "cuda":
        result["resident_after_profile_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    save()
    timer = StageTimer(pipe, sync)
    step_s = 1.0  # seconds per transformer forward, refined by each preset measured
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        steps, cfg, negative, _ = PRESETS[preset]
        forwards = steps * (2 if cfg > 1 and negative is not None else 1)
        runs = args.long_runs if steps > 10 else args.runs
        if not time_left(step_s * forwards * (runs + 0.2) + 10, preset):
            continue
        result["presets"][preset] = time_preset(pipe, size, preset, device, runs, timer, sync, flops, profile,
                                                args.gguf)
        step_s = result["presets"][preset]["transformer_forward_seconds"]
        print(json.dumps({preset: result["presets"][preset]}), flush=True)
        save()
    uncached = result["presets"].get("qwen-40step")
    if args.step_cache and uncached and time_left(uncached["seconds_per_edit"] * 1.3 + 10, "step cache"):
        result["step_cache"] = time_step_cache(pipe, size, device, timer, sync, flops, profile, args.gguf, uncached)
        print(json.dumps({"step_cache": result["step_cache"]}), flush=True)
        save()
    timer.unwrap()
    workdir = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    four = result["presets"].get("qwen-4step", {}).get("seconds_per_edit", 3.0)
    if args.serving and time_left(60 + four * (args.jobs + 8), "serving"):
        import gpu_serving  # beside this script

        try:
            result["serving"] = gpu_serving.measure(pipe, device, size, args.jobs, 4 if args.smoke else 64,
                                                    result["attention_backend"], workdir, sync, profile, args.gguf)
        except Exception as exc:  # keep what was measured; say what broke
            traceback.print_exc()
            result["serving_error"] = f"{type(exc).__name__}: {exc}"[:500]
        save()
    if args.compile and device == "cuda" and time_left(120 + four * (args.runs + args.jobs + 4), "compile"):
        try:
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
            t = time.perf_counter()
            run_edit(pipe, size, "qwen-4step", device, seed=0)
            compiled = {"compile_and_first_edit_seconds": round(time.perf_counter() - t, 1)}
            timer = StageTimer(pipe, sync)
            compiled["qwen-4step"] = time_preset(pipe, size, "qwen-4step", device, args.runs, timer, sync, flops,
                                                 profile)
            timer.unwrap()
            result["compiled"] = compiled
            print(json.dumps({"compiled": compiled}), flush=True)
            save()
            serving = result.get("serving")
            if serving:
                import gpu_serving

                compiled["queue_4step"] = gpu_serving.run_queue(serving["_engine"], serving["_presets"]["qwen-4step"],
                                                                serving["_upload"], args.jobs, sync)
                print(json.dumps({"compiled_queue_4step": compiled["queue_4step"]}), flush=True)
                save()
        except Exception as exc:
            traceback.print_exc()
            result["compile_error"] = f"{type(exc).__name__}: {exc}"[:500]
            save()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    save()
    shown = dict(result)
    if "serving" in shown:
        shown["serving"] = {k: v for k, v in shown["serving"].items() if not k.startswith("_")}
    print(json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
