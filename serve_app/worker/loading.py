"""Loading a preset's weights: where its base comes from, the pipeline read from disk in the worker's
profile and placed on its device, and the scheduler a preset runs with. Functions of their inputs:
what the engine holds (``engine.EditEngine``) is the engine's.

Every base is read with ``<PipelineClass>.from_pretrained(folder_or_hub_id, local_files_only=True)``:
the embedded tiny model (built offline on first use) through the same call as the real presets, so
the tests exercise the real loading code.
"""

from pathlib import Path

from ..presets import BUILTIN_TINY, Preset, looks_local
from ..profiles import Profile
from .placement import place, quantization_config
from .schedulers import LIGHTNING_SCHEDULER
from .tiny_model import ensure_tiny_model


def base_folder(models_dir: Path, preset: Preset) -> str:
    """What ``from_pretrained`` reads ``preset``'s base from: the tiny model's folder (built now if it
    is not yet), a local folder, or the hub id (from the Hugging Face cache)."""
    if preset.base == BUILTIN_TINY:
        return str(ensure_tiny_model(models_dir / "tiny"))
    local = Path(preset.base).expanduser()
    return str(local) if local.exists() else preset.base


def local_base(models_dir: Path, preset: Preset) -> str | None:
    """The folder ``preset``'s base is loaded from; None for a hub id."""
    return base_folder(models_dir, preset) if preset.base == BUILTIN_TINY or looks_local(preset.base) else None


def from_disk(preset: Preset, profile: Profile, dtype, device: str, models_dir: Path):
    """``preset``'s pipeline read from disk, its weights as ``profile`` says, placed on ``device``."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # no progress bars in the server log
    transformers.utils.logging.disable_progress_bar()
    cls = getattr(diffusers, preset.pipeline)
    kwargs = {"dtype": dtype, "local_files_only": True}
    quantization = quantization_config(profile, dtype)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    pipe = cls.from_pretrained(base_folder(models_dir, preset), **kwargs)
    place(pipe, profile, device)
    return pipe


def scheduler_for(default_config: dict, preset: Preset):
    """The scheduler ``preset`` runs with: the base's own, with Lightning's settings for a Lightning
    LoRA."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = {**default_config}
    if preset.scheduler == "lightning":
        config.update(LIGHTNING_SCHEDULER)
    return FlowMatchEulerDiscreteScheduler.from_config(config)
