"""The engine under profiles, on the tiny model through the same from_pretrained path as real presets.

int8 (torchao) is the quantized profile a CPU runs; it shares the adapter code path of fp8 and nf4."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.presets import build_registry
from serve_app.worker.engine import EditEngine, ProfileUnavailable
from serve_app.worker.tiny_model import random_lightning_lora

COMMON = {"base": "builtin:tiny", "resolution": 256, "nominal_seconds": 1.0, "cfg_scale": 1.0}


def photo(seed=0, side=256):
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(side, side, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


def pixels(result):
    return np.asarray(Image.open(io.BytesIO(result.png)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def registry(models, tmp_path_factory):
    from diffusers import QwenImageTransformer2DModel

    from serve_app.worker.tiny_model import ensure_tiny_model

    transformer = QwenImageTransformer2DModel.from_pretrained(ensure_tiny_model(models / "tiny") / "transformer")
    loras = tmp_path_factory.mktemp("loras")
    four = random_lightning_lora(transformer, loras / "four.safetensors", seed=1)
    eight = random_lightning_lora(transformer, loras / "eight.safetensors", seed=2)
    return build_registry({
        "tiny": {"resolution": 256},
        "t4": {**COMMON, "steps": 4, "scheduler": "lightning", "lora": {"path": str(four)}},
        "t8": {**COMMON, "steps": 8, "scheduler": "lightning", "lora": {"path": str(eight)}},
        "t40": {**COMMON, "steps": 6, "cfg_scale": 4.0, "negative_prompt": " "},
        "t4-int8": {**COMMON, "steps": 4, "scheduler": "lightning", "lora": {"path": str(four)}, "profile": "int8"},
        "t4-fp8": {**COMMON, "steps": 4, "profile": "fp8"},
    })


def _layer(engine, name="transformer_blocks.0.attn.to_q"):
    return dict(engine.pipe.transformer.named_modules())[name]


def _raw(weight) -> torch.Tensor:
    """The stored integers of a torchao int8 weight (a copy)."""
    return weight.qdata.detach().clone()


def test_int8_profile_loads_quantized_weights_through_from_pretrained(models, registry):
    engine = EditEngine(str(models), profile="int8")
    assert engine.choose_profile([registry["tiny"]]).name == "int8"
    assert engine.profile_reason == "profile int8 set in the config"
    engine.ensure(registry["tiny"])
    assert type(_layer(engine).weight).__name__ == "Int8Tensor" and _layer(engine).weight.qdata.dtype == torch.int8
    encoder = dict(engine.pipe.text_encoder.named_modules())
    assert type(encoder["model.language_model.layers.0.mlp.up_proj"].weight).__name__ == "Int8Tensor"
    assert type(encoder["lm_head"].weight).__name__ in ("Parameter", "Tensor")  # as transformers leaves it
    result = engine.run(registry["tiny"], photo(), "make the sky blue", seed=4)
    again = engine.run(registry["tiny"], photo(), "make the sky blue", seed=4)
    assert np.array_equal(pixels(result), pixels(again)) and pixels(result).shape == (256, 256, 3)


def test_lora_round_trip_on_a_quantized_base_is_exact(models, registry):
    engine = EditEngine(str(models), profile="int8")
    engine.choose_profile([registry["tiny"]])
    image = photo(seed=5)
    base = pixels(engine.run(registry["tiny"], image, "edit", seed=3))
    stored = _raw(_layer(engine).weight)
    four = pixels(engine.run(registry["t4"], image, "edit", seed=3))
    assert not np.array_equal(base, four)  # the LoRA really applies ...
    assert type(_layer(engine)).__name__ == "TorchaoLoraLinear"  # ... as an unfused adapter
    switches = [engine.ensure(registry[name]) for name in ("t40", "t8", "t4")]  # 4 -> 40 -> 8 -> 4
    assert all(s > 0 for s in switches)
    again = pixels(engine.run(registry["t4"], image, "edit", seed=3))
    back = pixels(engine.run(registry["tiny"], image, "edit", seed=3))
    assert np.array_equal(four, again) and np.array_equal(base, back)  # pixel-identical both ways
    assert not any("lora" in type(m).__name__.lower() for m in engine.pipe.transformer.modules())
    assert torch.equal(_raw(_layer(engine).weight), stored)  # the int8 weights were never written to
    assert engine.base == "builtin:tiny" and engine.held.name == "int8"


def test_a_preset_with_its_own_profile_reloads_the_base_in_it(models, registry):
    engine = EditEngine(str(models), profile="bf16")
    engine.choose_profile([registry["tiny"]])
    engine.ensure(registry["tiny"])
    assert engine.held.name == "bf16" and _layer(engine).weight.dtype == torch.float32
    engine.ensure(registry["t4-int8"])
    assert engine.held.name == "int8" and type(_layer(engine)).__name__ == "TorchaoLoraLinear"
    engine.ensure(registry["t4"])  # back to the worker's profile: bf16, LoRA fused
    assert engine.held.name == "bf16" and type(_layer(engine)).__name__ == "Linear"


def test_a_profile_the_device_cannot_run_is_refused_with_a_sentence(models, registry):
    engine = EditEngine(str(models), profile="fp8")
    with pytest.raises(ProfileUnavailable, match=r"^Profile fp8 needs FP8 tensor cores .* this worker has no GPU"):
        engine.choose_profile([registry["tiny"]])
    cpu = EditEngine(str(models), profile="bf16")
    cpu.choose_profile([registry["tiny"]])
    with pytest.raises(ProfileUnavailable, match="Profile fp8 needs FP8 tensor cores"):
        cpu.ensure(registry["t4-fp8"])  # a preset's own profile, checked before loading anything
    from serve_app.worker.engine import public_error

    try:
        cpu.ensure(registry["t4-fp8"])
    except ProfileUnavailable as exc:
        assert public_error(exc).startswith("Profile fp8 needs")  # what the job's error says
    assert cpu.run(registry["tiny"], photo(), "edit", seed=1).png.startswith(b"\x89PNG")  # still serving


def test_auto_on_a_cpu_worker_is_bf16_and_says_why(models, registry):
    engine = EditEngine(str(models), profile="auto")
    assert engine.profile is None
    assert engine.choose_profile([registry["tiny"]]).name == "bf16"
    assert "CPU" in engine.profile_reason


@pytest.mark.parametrize("profile", ["bf16", "int8"])
def test_a_job_prepared_ahead_gives_the_same_pixels(models, registry, profile):
    """What the worker does while the previous job finishes (uploads decoded, prompt encoded) gives
    exactly what the pipeline's own path gives, also with true CFG (a negative prompt encoded too)."""
    from serve_app.worker.engine import Prepared

    engine = EditEngine(str(models), profile=profile)
    engine.choose_profile([registry["tiny"]])
    images = [photo(seed=7), photo(seed=8, side=192)]
    for name in ("t4", "t40"):
        preset = registry[name]
        engine.ensure(preset)
        ahead = engine.prepare(preset, images, "make it winter", "You edit photos.")
        assert set(ahead.embeds) == ({"prompt_embeds", "prompt_embeds_mask"} |
                                     ({"negative_prompt_embeds", "negative_prompt_embeds_mask"} if name == "t40" else set()))
        plain = Prepared(ahead.images, ahead.prompt)  # no embeddings: the pipeline encodes the prompt itself
        a = engine.generate(preset, images, "make it winter", 11, "You edit photos.", prepared=ahead)
        b = engine.generate(preset, images, "make it winter", 11, "You edit photos.", prepared=plain)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # prepared before a base reload (another profile): the embeddings are not used, nothing breaks
    stale = engine.prepare(registry["tiny"], images, "edit")
    engine.ensure(registry["t4-int8" if profile == "bf16" else "tiny"])
    if profile == "bf16":
        assert engine.held.name == "int8" and stale.held != engine._held_key()
        assert engine.generate(registry["t4-int8"], images, "edit", 1, prepared=stale).size == (256, 256)
