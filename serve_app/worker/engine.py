"""The model engine: loads a preset's diffusers pipeline and runs one edit at a time.

The same code path serves the embedded tiny model and the real presets: both are loaded with
``<PipelineClass>.from_pretrained(folder_or_hub_id, local_files_only=True)`` (``loading``), so the tests exercise
the real loading code. Heavy imports (torch, diffusers) happen inside methods so that the ingress and
the queue, which import this package too, stay light.

The weights are held the way the worker's memory/precision profile says (``profiles``: bf16, FP8,
int8 or NF4 weights, offload); ``choose_profile`` resolves ``auto`` against the card's free memory
with the plan of ``memplan``. A preset may name its own profile; the base is then loaded again.

Presets that share a base (and profile) share one copy of it in memory. Switching between them swaps
the LoRA (``lora.LoraSlot``: fused into bf16 weights and restored exactly, or an adapter beside
quantized ones) and the scheduler, and never reloads the base from disk.

Not thread-safe: a diffusers pipeline gives wrong pixels when called from two threads, so the worker
runs one job at a time per engine (the contract of ``ModelWorker``). The one exception is
``prepare``: it may run in another thread while a job generates, because it touches only what a
generation never changes (the processor and the text encoder, on a side CUDA stream).
"""

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .. import images, profiles
from ..presets import BUILTIN_TINY, Preset
from ..profiles import PROFILES, Profile
from ..prompts import render
from . import loading, step_cache
from .lora import LoraSlot
from .pipeline_tweaks import set_fastest_attention, working_area

log = logging.getLogger(__name__)
_PATHS = re.compile(r"(/[\w.\-]+)+/?")


class JobCancelled(Exception):
    """Raised from the step callback when the job's station cancelled it: the pipeline stops there."""


class ProfileUnavailable(RuntimeError):
    """The worker's device cannot run the profile asked for (its message says what is missing)."""


def public_error(exc: BaseException) -> str:
    """A one-line reason for a failed job that names the problem but never a server path."""
    name = type(exc).__name__
    if isinstance(exc, (ProfileUnavailable, loading.TransformerFileRefused)):  # sentences written to be shown
        return str(exc)
    if name == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        return "CUDA out of memory"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = _PATHS.sub("<path>", text)[:300]
    return f"{name}: {text}" if text else name


@dataclass(frozen=True)
class Prepared:
    """A job's work done ahead, while the previous job still generates: the uploads decoded and, when
    the engine already held the job's base, the prompt encoded. ``held`` is what the encoding was made
    with; ``generate`` uses the embeddings only if it still holds that."""

    images: list
    prompt: str
    embeds: dict | None = None
    held: tuple | None = None


@dataclass(frozen=True)
class EditResult:
    png: bytes
    seed: int
    seconds: float
    width: int
    height: int


class EditEngine:
    def __init__(self, models_dir: str, device: str = "auto", torch_threads: int | None = None,
                 png_compress_level: int = 1, attention_backend: str = "auto", compile: bool = False,
                 profile: str = "bf16", gpu_memory_gib: float | None = None):
        # The worker shares its cores with the serving processes: OpenMP threads that spin while
        # waiting only take time from them (measured: 0.84 -> 0.88 served/direct on 2 cores).
        # Read when torch starts its thread pool, so set before the first import.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        # Ray sets OMP_NUM_THREADS from the actor's num_cpus (1 by default), which would leave CPU
        # inference on one core: say explicitly how many threads torch gets (per calling thread, see
        # generate).
        self.threads = torch_threads or os.cpu_count() or 1
        torch.set_num_threads(self.threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        if device == "cuda" and gpu_memory_gib:
            # The card as the config names it: on a bigger card, allocations past it fail as they
            # would on the real one (how a 24 GB configuration is proven on an 80 GB card).
            total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, gpu_memory_gib * profiles.GiB / total))
        self.device_info = profiles.probe(device, gpu_memory_gib)
        # The profile asked for; ``auto`` until choose_profile() has picked one.
        self.profile_wanted = profile
        self.profile: Profile | None = PROFILES.get(profile)
        self.profile_reason = f"profile {profile} set in the config" if self.profile else None
        self.models_dir = Path(models_dir)
        self.png_compress_level = png_compress_level
        self.attention_backend_wanted = attention_backend
        self.attention_backend: str | None = None
        self.compile = compile
        self.pipe = None
        self.base: str | None = None  # the base weights held in memory
        self.transformer_file = None  # the GGUF file their transformer came from (a WeightFile), if any
        self.step_cache = None  # what the held pipeline's cache-dit hooks were armed with (step_cache.armed_for)
        self.full_steps: int | None = None  # of the last generate: steps its transformer ran in full
        self.held: Profile | None = None  # the profile they are held in
        self.preset: Preset | None = None  # the preset those weights are configured for
        self.lora: LoraSlot | None = None  # the LoRA the held pipeline has (``lora``), with the pipeline
        # One side stream for ``prepare``, for the engine's life: the caching allocator keeps freed
        # blocks per stream, so a new stream per job would strand a text encoder's activations each.
        self._side_stream = None
        self._projection = None  # (base, Projection) for live previews, checked against the base's VAE once
        self.loading = False  # inside a load or switch (slow, but progress: the worker's lease holds)
        self.on_load = None  # called with (preset name, seconds) after a load or switch (metrics)

    # --- the profile ------------------------------------------------------------------------------

    def choose_profile(self, presets: list[Preset], images: int = 3) -> Profile:
        """Resolve the configured profile for this device, once, before any load. ``auto`` picks the
        fastest profile whose planned peak for the largest of ``presets`` (the ones this worker may
        serve) fits the free memory. Raises ``ProfileUnavailable`` with a sentence when the
        configured profile cannot run here, or when no profile fits."""
        # GGUF presets bring their transformer's format: only the profile's text encoder applies.
        gguf = bool(presets) and all(p.transformer_gguf is not None for p in presets)
        if self.profile_wanted != profiles.AUTO:
            why = profiles.missing(self.profile, self.device_info, gguf)
            if why:
                raise ProfileUnavailable(why)
            return self.profile
        from . import memplan

        def need(profile: Profile) -> int:
            return max((memplan.plan(p, profile, images, self._plan_folder(p)).peak for p in presets), default=0)

        chosen, reason = profiles.choose(self.device_info, need, gguf=gguf)
        if chosen is None:
            raise ProfileUnavailable(reason)
        self.profile, self.profile_reason = chosen, reason
        log.info("[ModelWorker] %s", reason)
        return chosen

    def refused_files(self, presets: list[Preset]) -> dict[str, str]:
        """Preset name -> the sentence why, for each of ``presets`` whose GGUF transformer file is
        here but unusable (not GGUF, truncated, another model's: ``loading.gguf_transformer_file``).
        Reads headers only; a file that is absent is ``missing_weights``' to say, not this."""
        refused = {}
        for preset in presets:
            if preset.transformer_gguf is None or preset.transformer_gguf.local_path() is None:
                continue
            try:
                loading.gguf_transformer_file(preset, self.models_dir)
            except loading.TransformerFileRefused as exc:
                refused[preset.name] = str(exc)
        return refused

    def _plan_folder(self, preset: Preset) -> str | None:
        from .architecture import local_folder

        if preset.base == BUILTIN_TINY:
            return self._base_folder(preset)
        folder = local_folder(preset.base)
        return str(folder) if folder else None

    def profile_for(self, preset: Preset) -> Profile:
        if preset.profile:
            return PROFILES[preset.profile]
        if self.profile is None:
            raise ProfileUnavailable("the worker has not chosen its profile yet")
        return self.profile

    # --- loading ---------------------------------------------------------------------------------

    def _base_folder(self, preset: Preset) -> str:
        return loading.base_folder(self.models_dir, preset)

    def local_base(self, preset: Preset) -> str | None:
        """The folder this engine loads ``preset``'s base from (the tiny model built first if it is
        not yet); None for a hub id (loaded from the Hugging Face cache)."""
        return loading.local_base(self.models_dir, preset)

    def ensure(self, preset: Preset) -> float:
        """Make ``preset`` the active one; returns the seconds it took (0 when it already was)."""
        if self.preset == preset:
            return 0.0
        start = time.perf_counter()
        profile = self.profile_for(preset)
        self.loading = True
        try:
            if not self._holds(preset) or self.pipe is None or self.held != profile:
                self._load_base(preset, profile)
            # The cache's hooks come off before the LoRA changes and go on after: a preset without
            # one runs exactly the bare pipeline.
            self.step_cache = step_cache.disarm_unless(self.pipe, self.step_cache, preset)
            self.lora.apply(preset.lora)
            self._configure_scheduler(preset)
            self.step_cache = step_cache.arm(self.pipe, self.step_cache, preset)
        finally:
            self.loading = False
        self.preset = preset
        seconds = time.perf_counter() - start
        log.info("[ModelWorker] Preset %s ready on %s (profile %s) in %.2fs", preset.name, self.device,
                 profile.name, seconds)
        if self.on_load is not None:
            self.on_load(preset.name, seconds)
        return seconds

    def _holds(self, preset: Preset) -> bool:
        """Whether the weights held are ``preset``'s (its base, pipeline and transformer file)."""
        return (self.pipe is not None and self.base == preset.base and type(self.pipe).__name__ == preset.pipeline
                and self.transformer_file == preset.transformer_gguf)

    def _load_base(self, preset: Preset, profile: Profile) -> None:
        why = profiles.missing(profile, self.device_info, preset.transformer_gguf is not None)
        if why:
            raise ProfileUnavailable(why)
        self.pipe, self.base, self.preset, self.lora = None, None, None, None  # the old base goes first
        self.held = None
        self.use_pipeline(loading.from_disk(preset, profile, self.dtype, self.device, self.models_dir),
                          preset.base, profile, preset.transformer_gguf)

    def use_pipeline(self, pipe, base: str, profile: Profile | None = None, transformer_file=None) -> None:
        """Hold ``pipe`` (already placed on this engine's device as ``profile`` says; default bf16)
        as the weights of ``base`` (its transformer from ``transformer_file``, a GGUF ``WeightFile``,
        when given): attention backend, compile and scheduler handling as for a loaded one. Loading
        ends here; the GPU benchmark also enters here with a pipeline it built with random weights."""
        self.pipe, self.base, self.preset, self.lora = None, None, None, None
        self.held = profile or PROFILES["bf16"]
        self.transformer_file = transformer_file
        self.step_cache = None  # a new pipeline has no hooks
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        # its cache checked against this base
        self.lora = LoraSlot(pipe, self.held.lora_mode_for(transformer_file is not None), self.device)
        self._default_scheduler_config = dict(self.pipe.scheduler.config)
        self._set_attention_backend()
        if self.compile and self.device == "cuda":
            self.pipe.transformer.compile_repeated_blocks(fullgraph=True)
        self.base = base

    def _set_attention_backend(self) -> None:
        self.attention_backend = ("native" if self.device != "cuda" else
                                  set_fastest_attention(self.pipe.transformer, self.attention_backend_wanted))

    def _configure_scheduler(self, preset: Preset) -> None:
        self.pipe.scheduler = loading.scheduler_for(self._default_scheduler_config, preset)

    # --- inference -------------------------------------------------------------------------------

    def _held_key(self) -> tuple:
        return (id(self.pipe), self.base, self.transformer_file, self.held)

    def prepare(self, preset: Preset, uploads: list, instruction: str,
                system_prompt: str | None = None) -> Prepared:
        """A job's host-side work, done ahead: the uploads as images (``images.to_rgb``: decoded here
        from their bytes, or the pixels the ingress decoded) and, when this engine already holds
        the preset's base in a resident profile (the text encoder is shared by every preset of a base;
        LoRAs touch only the transformer), encode the prompt as the pipeline would (the Qwen2-VL
        processor on the CPU, the text encoder on a side CUDA stream). Safe to call while another job
        generates; ``generate(..., prepared=)`` then skips that work, with identical pixels."""
        import torch

        torch.set_num_threads(self.threads)
        inputs = [images.to_rgb(u) for u in uploads]
        prompt = render(preset.prompt_template, instruction, system_prompt)
        held = self._held_key()
        pipe = self.pipe
        if (not self._holds(preset) or self.held != self.profile_for(preset)
                or self.held.offload != "none" or preset.pipeline != "QwenImageEditPlusPipeline"):
            return Prepared(inputs, prompt)
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (CONDITION_IMAGE_SIZE,
                                                                                calculate_dimensions)

        # The condition images exactly as the Plus pipeline makes them from each input.
        condition = []
        for image in inputs:
            w, h = calculate_dimensions(CONDITION_IMAGE_SIZE, image.width / image.height)
            condition.append(pipe.image_processor.resize(image, h, w))
        prompts = {"prompt": prompt}
        if preset.used_negative_prompt is not None:
            prompts["negative_prompt"] = preset.used_negative_prompt
        if self.device == "cuda" and self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        stream = self._side_stream
        embeds = {}
        with torch.inference_mode(), (torch.cuda.stream(stream) if stream else contextlib.nullcontext()):
            for key, text in prompts.items():
                values, mask = pipe.encode_prompt(text, image=condition, device=pipe._execution_device)
                if mask is None:  # all tokens valid: the pipeline wants a mask with given embeddings
                    mask = torch.ones(values.shape[:2], dtype=torch.long, device=values.device)
                name = "prompt_embeds" if key == "prompt" else "negative_prompt_embeds"
                embeds[name], embeds[name + "_mask"] = values, mask
        if stream is not None:
            stream.synchronize()  # done before the main stream uses them
        return Prepared(inputs, prompt, embeds, held)

    def preview_projection(self):
        """The latent -> RGB projection for this base's VAE (``previews.Projection.for_vae``), made
        the first time a job asks for previews and kept while the base stays loaded."""
        from .previews import Projection

        if self._projection is None or self._projection[0] != self.base:
            self._projection = (self.base, Projection.for_vae(self.pipe.vae, self.device, self.pipe.vae.dtype))
        return self._projection[1]

    def generate(self, preset: Preset, uploads: list, instruction: str, seed: int,
                 system_prompt: str | None = None, on_step=None, prepared: Prepared | None = None,
                 on_preview=None):
        """The edited PIL image. Same inputs and seed give identical pixels (a per-job generator),
        with or without ``prepared`` (this job's ``prepare``, made ahead), with or without previews.

        ``on_step(step, total)`` is called after every denoising step, in the calling thread; an
        exception it raises (``JobCancelled``) stops the job there and propagates.
        ``on_preview(step, jpeg)``: given, a live preview of each step is made (``previews``) and
        handed over, on a GPU up to a step late; not given, nothing of it is computed."""
        import torch
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

        # OpenMP's thread count is per calling thread: a worker thread started under
        # OMP_NUM_THREADS=1 would run single-threaded (measured: 2x slower on 2 cores).
        torch.set_num_threads(self.threads)
        self.ensure(preset)
        if prepared is None:
            prepared = self.prepare(preset, uploads, instruction, system_prompt)
        inputs, prompt = prepared.images, prepared.prompt
        area = preset.resolution * preset.resolution
        # The pipeline sizes the output from the last image; so do we, at the preset's working area.
        width, height = calculate_dimensions(area, inputs[-1].width / inputs[-1].height)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        plus = preset.pipeline == "QwenImageEditPlusPipeline"
        if not plus and len(inputs) > 1:
            raise ValueError(f"preset {preset.name} takes one image; this job has {len(inputs)}")
        kwargs = dict(
            image=inputs if plus else inputs[0], prompt=prompt, negative_prompt=preset.used_negative_prompt,
            true_cfg_scale=preset.cfg_scale, num_inference_steps=preset.steps, height=height, width=width,
            generator=generator,
        )
        if prepared.embeds and prepared.held == self._held_key():
            kwargs.update(prepared.embeds, prompt=None,
                          negative_prompt=None if "negative_prompt_embeds" in prepared.embeds else kwargs["negative_prompt"])
        previewer = None
        if on_preview is not None:
            from .previews import Previewer

            previewer = Previewer(self.preview_projection(), height, width, self.pipe.vae_scale_factor, self.device,
                                  on_preview)
        if on_step is not None or previewer is not None:
            sigmas: list[float] = []  # the schedule, read from the device once (at step 1), not every step

            def callback(pipe, i, t, callback_kwargs):
                if previewer is not None:
                    scheduler = pipe.scheduler
                    index = getattr(scheduler, "step_index", None)  # already moved past step i
                    if not sigmas and getattr(scheduler, "sigmas", None) is not None:
                        sigmas.extend(scheduler.sigmas.tolist())
                    sigma = sigmas[index] if index is not None and index < len(sigmas) else None
                    previewer.step(i + 1, callback_kwargs["latents"], sigma)
                if on_step is not None:
                    on_step(i + 1, preset.steps)
                return callback_kwargs

            kwargs["callback_on_step_end"] = callback
        self.full_steps = None
        with torch.inference_mode(), working_area(area):
            image = self.pipe(**kwargs).images[0]
        self.full_steps = step_cache.full_steps(self.pipe, self.step_cache, preset.steps)
        if previewer is not None:
            previewer.flush()
        return image

    def encode(self, image) -> bytes:
        return images.encode_png(image, self.png_compress_level)

    def run(self, preset: Preset, images_bytes: list[bytes] | bytes, instruction: str, seed: int,
            system_prompt: str | None = None) -> EditResult:
        """generate + encode in one call (the worker splits them to encode off the GPU's path)."""
        if isinstance(images_bytes, (bytes, bytearray)):
            images_bytes = [bytes(images_bytes)]
        start = time.perf_counter()
        out = self.generate(preset, images_bytes, instruction, seed, system_prompt)
        png = self.encode(out)
        return EditResult(png=png, seed=seed, seconds=time.perf_counter() - start, width=out.width, height=out.height)
