"""GGUF transformers on the tiny model: the project's builder writes them, the engine loads them
through diffusers' ``from_single_file`` path, LoRAs switch on them exactly, bad files are refused."""

import io

import numpy as np
import pytest
from PIL import Image

from serve_app.presets import build_registry, missing_weights
from serve_app.worker import gguf_files
from serve_app.worker.engine import EditEngine, public_error
from serve_app.worker.loading import TransformerFileRefused
from serve_app.worker.tiny_model import ensure_tiny_gguf, random_lightning_lora
from tests.helpers import photo

COMMON = {"base": "builtin:tiny", "resolution": 256, "nominal_seconds": 1.0, "cfg_scale": 1.0}


@pytest.fixture(scope="module")
def gguf_engine(tmp_path_factory):
    engine = EditEngine(str(tmp_path_factory.mktemp("models")))
    tiny = engine.models_dir / "tiny"
    files = {q: ensure_tiny_gguf(tiny, q) for q in ("Q8_0", "Q4_0")}
    loras = tmp_path_factory.mktemp("loras")
    engine.ensure(build_registry({"tiny": {"resolution": 256}})["tiny"])  # the transformer, to shape LoRAs
    four = random_lightning_lora(engine.pipe.transformer, loras / "tiny-4step.safetensors", seed=1)
    eight = random_lightning_lora(engine.pipe.transformer, loras / "tiny-8step.safetensors", seed=2)
    q8 = {"transformer_gguf": {"path": str(files["Q8_0"])}}
    reg = build_registry({
        "tiny": {"resolution": 256},
        "g4": {**COMMON, **q8, "steps": 4, "scheduler": "lightning", "lora": {"path": str(four)}},
        "g8": {**COMMON, **q8, "steps": 8, "scheduler": "lightning", "lora": {"path": str(eight)}},
        "g40": {**COMMON, **q8, "steps": 6, "cfg_scale": 4.0},
        "q4": {**COMMON, "transformer_gguf": {"path": str(files["Q4_0"])}, "steps": 4},
    })
    return engine, reg, files


def _pixels(result):
    return np.asarray(Image.open(io.BytesIO(result.png)))


def test_the_builder_writes_q8_0_and_q4_0_files_of_the_tiny_transformer(gguf_engine):
    engine, _, files = gguf_engine
    q8, q4 = (gguf_files.tensors(str(files[q])) for q in ("Q8_0", "Q4_0"))
    assert gguf_files.main_type(q8) == "Q8_0" and gguf_files.main_type(q4) == "Q4_0"
    quantized = [n for n, (_, t, _) in q8.items() if t == "Q8_0"]
    assert "transformer_blocks.0.attn.to_q.weight" in quantized and len(quantized) > 30
    assert files["Q4_0"].stat().st_size < files["Q8_0"].stat().st_size
    assert ensure_tiny_gguf(engine.models_dir / "tiny", "Q8_0") == files["Q8_0"]  # idempotent
    assert gguf_files.type_from_name("Qwen-Image-Edit-2509-Q4_K_M.gguf") == "Q4_K_M"
    assert gguf_files.type_from_name("qwen_image_edit_2509_Q8_0.gguf") == "Q8_0"
    assert gguf_files.type_from_name("transformer.gguf") is None


def test_a_gguf_preset_runs_on_packed_weights_and_differs_by_type(gguf_engine):
    engine, reg, _ = gguf_engine
    image = photo(256, 256, seed=4)
    q8 = _pixels(engine.run(reg["g40"], image, "make the sky blue", seed=5))
    layer = dict(engine.pipe.transformer.named_modules())["transformer_blocks.0.attn.to_q"]
    assert type(layer).__name__ == "GGUFLinear" and layer.weight.quant_type.name == "Q8_0"
    assert engine.pipe.transformer.dtype is not None and q8.shape == (256, 256, 3)
    q4 = _pixels(engine.run(reg["q4"], image, "make the sky blue", seed=5))
    assert not np.array_equal(q8, q4)  # another file, other weights: the file is what runs


def test_lightning_loras_switch_exactly_on_gguf_weights(gguf_engine):
    engine, reg, _ = gguf_engine
    image = photo(256, 256, seed=6)
    four = _pixels(engine.run(reg["g4"], image, "edit", seed=3))
    assert engine.lora.mode == "adapter"  # never fused into packed weights
    base = _pixels(engine.run(reg["g40"], image, "edit", seed=3))
    engine.run(reg["g8"], image, "edit", seed=3)
    again = _pixels(engine.run(reg["g4"], image, "edit", seed=3))
    back = _pixels(engine.run(reg["g40"], image, "edit", seed=3))
    assert not np.array_equal(four, base)  # the LoRA really changes the output
    assert np.array_equal(four, again) and np.array_equal(base, back)  # 4 -> 40 -> 8 -> 4 -> 40, exact
    pipe = engine.pipe
    engine.run(reg["g8"], image, "edit", seed=3)
    assert engine.pipe is pipe  # one GGUF base for all three: switches never reload it


def _refusal(engine, tmp_path, name: str, content: bytes | None = None, source=None) -> str:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    preset = build_registry({"bad": {**COMMON, "steps": 2, "transformer_gguf": {"path": str(source or path)}}})["bad"]
    with pytest.raises(TransformerFileRefused) as caught:
        engine.ensure(preset)
    message = public_error(caught.value)
    assert str(tmp_path) not in message and "presets.bad.transformer_gguf" in message
    return message


def test_bad_files_are_refused_with_a_sentence_naming_the_file(gguf_engine, tmp_path):
    engine, reg, files = gguf_engine
    not_gguf = _refusal(engine, tmp_path, "weights.gguf", b"PK\x03\x04 this is a zip, not a GGUF file" * 10)
    assert not_gguf.startswith("Preset bad cannot use its GGUF transformer weights.gguf")
    assert "not a GGUF file" in not_gguf
    whole = files["Q8_0"].read_bytes()
    cut = _refusal(engine, tmp_path, "cut-Q8_0.gguf", whole[: len(whole) // 2])
    assert "truncated" in cut
    # another model's transformer: the tiny one written with a tensor renamed and one reshaped
    from safetensors.torch import load_file

    weights = load_file(str(engine.models_dir / "tiny" / "transformer" / "diffusion_pytorch_model.safetensors"))
    weights["single_transformer_blocks.0.proj.weight"] = weights.pop("transformer_blocks.0.attn.to_q.weight")
    written = gguf_files.write(weights, tmp_path / "alien.gguf", "Q8_0")
    alien = _refusal(engine, tmp_path, "alien.gguf", source=written)
    assert "not a transformer of this model" in alien and "single_transformer_blocks.0.proj.weight" in alien
    weights = load_file(str(engine.models_dir / "tiny" / "transformer" / "diffusion_pytorch_model.safetensors"))
    weights["img_in.weight"] = weights["img_in.weight"][:32]
    written = gguf_files.write(weights, tmp_path / "narrow.gguf", "Q8_0")
    narrow = _refusal(engine, tmp_path, "narrow.gguf", source=written)
    assert "img_in.weight is 32x64 there, 64x64 in the model" in narrow
    # the engine still serves its good presets after each refusal
    assert engine.run(reg["g40"], photo(256, 256), "edit", seed=1).png.startswith(b"\x89PNG")


def test_a_missing_gguf_file_is_named_by_its_config_key(tmp_path):
    preset = build_registry({"g": {**COMMON, "steps": 2, "transformer_gguf": {"path": str(tmp_path / "x.gguf")}}})["g"]
    assert missing_weights(preset) == ("Preset g needs its GGUF transformer file (presets.g.transformer_gguf.path "
                                       "in config/serve.yaml), which does not exist.")
    spec = {"repo": "QuantStack/Qwen-Image-Edit-2509-GGUF", "file": "Qwen-Image-Edit-2509-Q4_K_M.gguf"}
    hub = build_registry({"g": {**COMMON, "steps": 2, "transformer_gguf": spec}})["g"]
    assert "hf download QuantStack/Qwen-Image-Edit-2509-GGUF Qwen-Image-Edit-2509-Q4_K_M.gguf" in missing_weights(hub)
    with pytest.raises(ValueError, match="is not a .gguf file"):
        build_registry({"g": {**COMMON, "steps": 2, "transformer_gguf": {"path": "/models/transformer.safetensors"}}})
