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


class TransformerFileRefused(RuntimeError):
    """A preset's GGUF transformer file cannot be used; the message is the sentence to show (the
    file's name and its config key, never its folder)."""


def _config_folder(models_dir: Path, preset: Preset) -> Path | None:
    """The folder with the base's configs: the tiny model's, a local one, or the hub cache snapshot."""
    from .architecture import local_folder

    return local_folder(base_folder(models_dir, preset))


def gguf_transformer_file(preset: Preset, models_dir: Path) -> str:
    """The path of ``preset``'s GGUF transformer, checked against its base's transformer (names and
    shapes, from the header alone). Raises ``TransformerFileRefused`` with the sentence to show."""
    from . import gguf_files
    from .architecture import meta_transformer

    spec = preset.transformer_gguf
    where = f"presets.{preset.name}.transformer_gguf"

    def refused(why: str) -> TransformerFileRefused:
        return TransformerFileRefused(
            f"Preset {preset.name} cannot use its GGUF transformer {spec.name} ({where}): {why}. Download it "
            f"again, or name a GGUF of {preset.model_name}'s transformer.")

    path = spec.local_path()
    if path is None:
        raise refused("the file is not on this server")
    try:
        found = gguf_files.tensors(path)
    except gguf_files.BadGGUF as exc:
        raise refused(str(exc)) from None
    folder = _config_folder(models_dir, preset)
    if folder is not None:  # (without the base's configs, from_pretrained fails first, saying so)
        expected = {name: tuple(p.shape) for name, p in meta_transformer(folder).state_dict().items()}
        why = gguf_files.mismatch(found, expected)
        if why:
            raise refused(why)
    return path


def from_disk(preset: Preset, profile: Profile, dtype, device: str, models_dir: Path):
    """``preset``'s pipeline read from disk, its weights as ``profile`` says, placed on ``device``.
    A preset with ``transformer_gguf`` gets that file's transformer (checked first: a bad file raises
    ``TransformerFileRefused``) and the rest from its base, the text encoder as ``profile`` says."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # no progress bars in the server log
    transformers.utils.logging.disable_progress_bar()
    cls = getattr(diffusers, preset.pipeline)
    kwargs = {"dtype": dtype, "local_files_only": True}
    gguf = preset.transformer_gguf is not None
    quantization = quantization_config(profile, dtype, transformer=not gguf)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    folder = base_folder(models_dir, preset)
    if gguf:
        path = gguf_transformer_file(preset, models_dir)
        kwargs["transformer"] = diffusers.QwenImageTransformer2DModel.from_single_file(
            path, config=folder, subfolder="transformer", torch_dtype=dtype, local_files_only=True,
            quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=dtype))
    pipe = cls.from_pretrained(folder, **kwargs)
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
