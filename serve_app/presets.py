"""The preset registry: named model settings that stations ask for, and where their weights live.

A preset names a base pipeline (a local folder, a hub id, or ``builtin:tiny``), an optional LoRA,
steps, CFG and working resolution. Presets are plain data, validated once when the app is built;
operators add or change them in ``config/serve.yaml`` without code. Stations may use the older
spellings (``4-step``...) wherever a preset is named: ``resolve`` maps them to the canonical name.

``missing_weights`` answers, without loading anything and without touching the network, whether a
preset's files are on this machine, and if not, a sentence that says what to provide.
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import BadRequest, PresetUnavailable
from .profiles import PROFILES
from .prompts import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_TEMPLATE, template_problem

BUILTIN_TINY = "builtin:tiny"
LIGHTNING_REPO = "lightx2v/Qwen-Image-Lightning"


class WeightFile(BaseModel):
    """One weights file (a LoRA, a GGUF transformer): ``path`` on disk, or ``repo`` + ``file`` in the
    Hugging Face cache."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str | None = None
    repo: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.path) == bool(self.repo and self.file):
            raise ValueError("a weights file needs either `path`, or both `repo` and `file`")
        return self

    def describe(self) -> str:
        return self.path or f"{self.file} from {self.repo}"

    @property
    def name(self) -> str:
        """The file's name, safe to show stations (never its folder)."""
        return Path(self.path or self.file).name

    def local_path(self) -> str | None:
        """Where the file is on this machine (``path``, or the hub cache's copy), or None. Never
        touches the network."""
        if self.path:
            found = Path(self.path).expanduser()
            return str(found) if found.is_file() else None
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(repo_id=self.repo, filename=self.file)
        except Exception:  # not a repo id
            return None
        return found if isinstance(found, str) else None


class StepCache(BaseModel):
    """cache-dit's DBCache for a preset: at each step the first ``compute_first_blocks`` transformer
    blocks run; when their output changed less than ``threshold`` (relative L1) since the last full
    step, the other blocks' residual from then is reused instead of computed. Never in the first
    ``warmup_steps`` steps, and never more than ``max_continuous_cached_steps`` steps in a row.
    Defaults: the settings SGLang publishes for Qwen-Image with cache-dit (1.69x at 50 steps)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    compute_first_blocks: int = Field(1, ge=1, le=60, description="blocks always computed first (cache-dit Fn)")
    compute_last_blocks: int = Field(0, ge=0, le=60, description="blocks always computed last (cache-dit Bn)")
    threshold: float = Field(0.12, gt=0, le=1, description="residual difference under which a step is cached")
    warmup_steps: int = Field(8, ge=0, le=200, description="first steps always computed in full")
    warmup_interval: int = Field(2, ge=1, le=200, description="within the warm-up, every n-th step computed")
    max_cached_steps: int = Field(-1, ge=-1, le=200, description="-1: no limit")
    max_continuous_cached_steps: int = Field(2, ge=-1, le=200,
                                             description="cached steps in a row at most; -1: no limit")


class Preset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,40}$")
    aliases: tuple[str, ...] = ()
    description: str = ""
    base: str = Field(min_length=1, description="local folder, hub id, or builtin:tiny")
    pipeline: Literal["QwenImageEditPlusPipeline", "QwenImageEditPipeline"] = "QwenImageEditPlusPipeline"
    lora: WeightFile | None = None
    transformer_gguf: WeightFile | None = Field(
        None, description="the transformer from this GGUF file (QuantStack/unsloth Q4_0...Q8_0); "
                          "the rest of the pipeline from the base")
    scheduler: Literal["default", "lightning"] = "default"
    steps: int = Field(ge=1, le=200)
    cfg_scale: float = Field(ge=1.0, le=20.0)
    prompt_template: str = Field(DEFAULT_PROMPT_TEMPLATE, max_length=4000,
                                 description="what the model is asked: {system_prompt} and {instruction} filled in")
    negative_prompt: str | None = Field(DEFAULT_NEGATIVE_PROMPT, max_length=4000,
                                        description="used where CFG runs (cfg_scale > 1); null: none")
    resolution: int = Field(1024, ge=64, le=2048, description="working area is resolution x resolution")
    nominal_seconds: float = Field(gt=0, description="seeds the ETA until jobs have been measured")
    profile: str | None = Field(None, description="memory/precision profile for this preset; default: the worker's")

    @model_validator(mode="after")
    def _usable_template(self):
        problem = template_problem(self.prompt_template)
        if problem:
            raise ValueError(f"prompt_template: {problem}")
        return self

    @model_validator(mode="after")
    def _known_profile(self):
        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}: choose one of {', '.join(PROFILES)} "
                             "(auto is for worker.profile)")
        return self

    step_cache: StepCache | None = Field(None, description="reuse transformer work across steps (cache-dit); "
                                                           "off by default")

    @model_validator(mode="after")
    def _gguf_file(self):
        if self.transformer_gguf is not None and not self.transformer_gguf.name.endswith(".gguf"):
            raise ValueError(f"transformer_gguf: {self.transformer_gguf.name!r} is not a .gguf file")
        return self

    @property
    def weights_key(self) -> tuple:
        """What the weights held in memory for this preset are: presets with equal keys share them."""
        return (self.base, self.pipeline, self.transformer_gguf)

    @property
    def used_negative_prompt(self) -> str | None:
        """The negative prompt the pipeline gets: this preset's where CFG runs (``cfg_scale`` > 1), else
        none. Below that the pipeline ignores it (the same pixels) and would log a warning per job."""
        return self.negative_prompt if self.cfg_scale > 1 else None

    @property
    def suffix(self) -> str:
        return self.name.removeprefix("qwen-")

    @property
    def model_name(self) -> str:
        """What the preset runs, safe to show stations: a hub id, or a local folder's name only."""
        return Path(self.base).name if looks_local(self.base) else self.base

    @property
    def estimated_time(self) -> str:
        s = self.nominal_seconds
        return f"~{s:g} seconds" if s < 120 else f"~{s / 60:g} minutes"

    def public(self) -> dict:
        """The entry /api/v1/models shows (contract fields first, then additions)."""
        return {
            "name": self.name, "suffix": self.suffix, "steps": self.steps, "cfg_scale": self.cfg_scale,
            "estimated_time": self.estimated_time, "description": self.description,
            "aliases": list(self.aliases), "estimated_seconds": self.nominal_seconds,
            "prompt_template": self.prompt_template,
            "negative_prompt": self.used_negative_prompt,
            "step_cache": self.step_cache is not None,
        }


DEFAULT_PRESETS: dict[str, dict] = {
    "qwen-4step": {
        "aliases": ["4-step"], "description": "Qwen-Image-Edit-2509 + Lightning 4-step LoRA (fast)",
        "base": "Qwen/Qwen-Image-Edit-2509", "scheduler": "lightning", "steps": 4, "cfg_scale": 1.0,
        "lora": {"repo": LIGHTNING_REPO,
                 "file": "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-4steps-V1.0-bf16.safetensors"},
        "nominal_seconds": 20,
    },
    "qwen-8step": {
        "aliases": ["8-step"], "description": "Qwen-Image-Edit-2509 + Lightning 8-step LoRA (balanced)",
        "base": "Qwen/Qwen-Image-Edit-2509", "scheduler": "lightning", "steps": 8, "cfg_scale": 1.0,
        "lora": {"repo": LIGHTNING_REPO,
                 "file": "Qwen-Image-Edit-2509/Qwen-Image-Edit-2509-Lightning-8steps-V1.0-bf16.safetensors"},
        "nominal_seconds": 40,
    },
    "qwen-40step": {
        "aliases": ["40-step"], "description": "Qwen-Image-Edit-2509, 40 steps, true CFG 4.0 (best quality)",
        "base": "Qwen/Qwen-Image-Edit-2509", "steps": 40, "cfg_scale": 4.0,
        "nominal_seconds": 180,
    },
    "tiny": {
        "description": "Embedded random-weight model of the real architecture, for CPU demos and tests "
                       "(its pictures are noise, not edits)",
        "base": BUILTIN_TINY, "steps": 4, "cfg_scale": 1.0, "resolution": 256, "nominal_seconds": 1.0,
    },
}


def build_registry(overrides: dict[str, dict] | None) -> dict[str, Preset]:
    """Defaults merged with the YAML's ``presets:`` (a field given there replaces the default's)."""
    merged = {name: dict(spec) for name, spec in DEFAULT_PRESETS.items()}
    for name, spec in (overrides or {}).items():
        merged[name] = {**merged.get(name, {}), **(spec or {})}
    registry = {name: Preset(name=name, **spec) for name, spec in merged.items()}
    seen: dict[str, str] = {}
    for preset in registry.values():
        for label in (preset.name, *preset.aliases):
            if label in seen and seen[label] != preset.name:
                raise ValueError(f"preset name or alias {label!r} is used by both {seen[label]} and {preset.name}")
            seen[label] = preset.name
    return registry


def resolve(registry: dict[str, Preset], name: str) -> Preset:
    """The preset for a canonical name or an alias; 400 naming the choices otherwise."""
    wanted = name.strip()
    for preset in registry.values():
        if wanted == preset.name or wanted in preset.aliases:
            return preset
    choices = ", ".join(sorted(registry))
    raise BadRequest(f"Unknown preset {wanted[:60]!r}. Choose one of: {choices}.")


def looks_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or os.path.isabs(ref) or Path(ref).exists()


def _hub_cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=repo, filename=filename)
    return isinstance(found, str)


def missing_weights(preset: Preset) -> str | None:
    """None when every file the preset needs is on this machine, else what is missing and how to fix it.

    The sentence goes to stations, so it never contains a server path: local folders and files are
    named by the config key that sets them."""
    if preset.base != BUILTIN_TINY:
        if looks_local(preset.base):
            if not (Path(preset.base).expanduser() / "model_index.json").is_file():
                return (f"Preset {preset.name} needs its model folder (presets.{preset.name}.base in "
                        "config/serve.yaml), which is missing or has no model_index.json.")
        elif not _hub_cached(preset.base, "model_index.json"):
            return (f"Preset {preset.name} needs the weights of {preset.base}, which are not on this server. "
                    f"Download them (`hf download {preset.base}`) or set presets.{preset.name}.base "
                    "in config/serve.yaml to a local folder.")
    gguf = preset.transformer_gguf
    if gguf is not None and gguf.local_path() is None:
        if gguf.path is not None:
            return (f"Preset {preset.name} needs its GGUF transformer file (presets.{preset.name}.transformer_gguf"
                    ".path in config/serve.yaml), which does not exist.")
        return (f"Preset {preset.name} needs the GGUF transformer {gguf.file} from {gguf.repo}, which is not on "
                f"this server. Download it (`hf download {gguf.repo} {gguf.file}`) or set "
                f"presets.{preset.name}.transformer_gguf.path in config/serve.yaml.")
    lora = preset.lora
    if lora is not None:
        if lora.path is not None:
            if not Path(lora.path).expanduser().is_file():
                return (f"Preset {preset.name} needs its LoRA file (presets.{preset.name}.lora.path in "
                        "config/serve.yaml), which does not exist.")
        elif not _hub_cached(lora.repo, lora.file):
            return (f"Preset {preset.name} needs the LoRA {lora.file} from {lora.repo}, which is not on this "
                    f"server. Download it (`hf download {lora.repo} {lora.file}`) or set "
                    f"presets.{preset.name}.lora.path in config/serve.yaml.")
    return None


def require_available(preset: Preset) -> None:
    missing = missing_weights(preset)
    if missing:
        raise PresetUnavailable(missing)
