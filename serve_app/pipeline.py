"""The model engine: loads a preset's diffusers pipeline and runs one edit at a time.

The same code path serves the embedded tiny model and the real presets: both are loaded with
``<PipelineClass>.from_pretrained(folder_or_hub_id, local_files_only=True)``, so the tests exercise
the real loading code. Heavy imports (torch, diffusers) happen inside methods so that the ingress and
the queue, which import this package too, stay light.

Not thread-safe: a diffusers pipeline gives wrong pixels when called from two threads, so the worker
runs one job at a time per engine (the contract of ``ModelWorker``).
"""

import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import images
from .presets import BUILTIN_TINY, LIGHTNING_SCHEDULER, Preset
from .tiny_model import ensure_tiny_model

log = logging.getLogger("ray.serve")
_PATHS = re.compile(r"(/[\w.\-]+)+/?")


def public_error(exc: BaseException) -> str:
    """A one-line reason for a failed job that names the problem but never a server path."""
    name = type(exc).__name__
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "CUDA out of memory"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = _PATHS.sub("<path>", text)[:300]
    return f"{name}: {text}" if text else name


@dataclass(frozen=True)
class EditResult:
    png: bytes
    seed: int
    seconds: float
    width: int
    height: int


class EditEngine:
    def __init__(self, models_dir: str, device: str = "auto", torch_threads: int | None = None,
                 png_compress_level: int = 1):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.models_dir = Path(models_dir)
        self.png_compress_level = png_compress_level
        self.pipe = None
        self.base: str | None = None  # the base weights held in memory
        self.preset: Preset | None = None  # the preset those weights are configured for

    def _base_folder(self, preset: Preset) -> str:
        if preset.base == BUILTIN_TINY:
            return str(ensure_tiny_model(self.models_dir / "tiny"))
        return str(Path(preset.base).expanduser()) if Path(preset.base).expanduser().exists() else preset.base

    def ensure(self, preset: Preset) -> float:
        """Make ``preset`` the active one; returns the seconds it took (0 when it already was)."""
        if self.preset == preset:
            return 0.0
        if preset.lora is not None:
            raise NotImplementedError(
                f"preset {preset.name} uses a LoRA, which this build cannot load yet")
        start = time.perf_counter()
        if self.base != preset.base:
            import diffusers
            import transformers

            diffusers.utils.logging.disable_progress_bar()  # no progress bars in the server log
            transformers.utils.logging.disable_progress_bar()
            self.pipe = None  # free the old weights before loading new ones
            cls = getattr(diffusers, preset.pipeline)
            pipe = cls.from_pretrained(self._base_folder(preset), dtype=self.dtype, local_files_only=True)
            pipe.set_progress_bar_config(disable=True)
            self.pipe = pipe.to(self.device)
            self._default_scheduler_config = dict(self.pipe.scheduler.config)
            self.base = preset.base
        self._configure_scheduler(preset)
        self.preset = preset
        seconds = time.perf_counter() - start
        log.info("[ModelWorker] Preset %s ready on %s in %.2fs", preset.name, self.device, seconds)
        return seconds

    def _configure_scheduler(self, preset: Preset) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        config = {**self._default_scheduler_config}
        if preset.scheduler == "lightning":
            config.update(LIGHTNING_SCHEDULER)
        self.pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)

    @contextlib.contextmanager
    def _working_area(self, area: int):
        """The Plus pipeline encodes references at a fixed module-level area; scope ours to this call."""
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus

        saved = plus.VAE_IMAGE_SIZE
        plus.VAE_IMAGE_SIZE = area
        try:
            yield
        finally:
            plus.VAE_IMAGE_SIZE = saved

    def run(self, preset: Preset, image_bytes: bytes, instruction: str, seed: int,
            system_prompt: str | None = None) -> EditResult:
        """One edit; same inputs and seed give identical pixels (a per-job ``torch.Generator``)."""
        import torch
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

        self.ensure(preset)
        start = time.perf_counter()
        image = images.decode(image_bytes)
        area = preset.resolution * preset.resolution
        width, height = calculate_dimensions(area, image.width / image.height)
        prompt = f"{system_prompt.strip()}\n{instruction}" if system_prompt and system_prompt.strip() else instruction
        generator = torch.Generator(device="cpu").manual_seed(seed)
        kwargs = dict(
            image=[image] if preset.pipeline == "QwenImageEditPlusPipeline" else image,
            prompt=prompt, negative_prompt=preset.negative_prompt, true_cfg_scale=preset.cfg_scale,
            num_inference_steps=preset.steps, height=height, width=width, generator=generator,
        )
        with torch.inference_mode(), self._working_area(area):
            out = self.pipe(**kwargs).images[0]
        png = images.encode_png(out, self.png_compress_level)
        return EditResult(png=png, seed=seed, seconds=time.perf_counter() - start,
                          width=out.width, height=out.height)
