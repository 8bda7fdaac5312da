"""GGUF transformers through the real Serve app: the tiny model's transformer written as Q8_0 and Q4_0
by the project's builder, presets that run on them (a Lightning LoRA switched on and off exactly, a
step cache that leaves the uncached preset's pixels as they were and says how many steps ran in
full), and presets whose files are not GGUF, cut short or of another model: refused with a sentence
naming the file, health degraded, the worker serving the others, never a 500."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import IMAGE, remove_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gguf_api(cluster, deploy):
    from diffusers import QwenImageTransformer2DModel

    from serve_app.worker.tiny_model import ensure_tiny_gguf, ensure_tiny_model, random_lightning_lora

    root = cluster["root"]
    tiny = ensure_tiny_model(root / "models" / "tiny")
    q8, q4 = ensure_tiny_gguf(tiny, "Q8_0"), ensure_tiny_gguf(tiny, "Q4_0")
    lora = random_lightning_lora(QwenImageTransformer2DModel.from_pretrained(tiny / "transformer"),
                                 root / "gguf-loras" / "tiny-4step.safetensors", seed=7)
    broken = root / "gguf-files" / "broken-Q4_0.gguf"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"<html>404: this download was an error page, not a model</html>\n" * 50)
    whole = q8.read_bytes()
    (root / "gguf-files" / "cut-Q8_0.gguf").write_bytes(whole[: len(whole) * 2 // 3])  # a download cut short
    from safetensors.torch import load_file

    from serve_app.worker.gguf_files import write

    weights = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    weights["single_transformer_blocks.0.proj.weight"] = weights.pop("transformer_blocks.0.attn.to_q.weight")
    write(weights, root / "gguf-files" / "other-model-Q8_0.gguf", "Q8_0")  # another model's names
    common = {"base": "builtin:tiny", "cfg_scale": 1.0, "resolution": 256, "nominal_seconds": 1.0}
    presets = {
        "g4": {**common, "transformer_gguf": {"path": str(q8)}, "steps": 4, "scheduler": "lightning",
               "lora": {"path": str(lora)}},
        "g40": {**common, "transformer_gguf": {"path": str(q8)}, "steps": 6, "cfg_scale": 4.0},
        "g40-fast": {**common, "transformer_gguf": {"path": str(q8)}, "steps": 6, "cfg_scale": 4.0,
                     "step_cache": {"threshold": 0.5, "warmup_steps": 2, "warmup_interval": 1}},
        "q4": {**common, "transformer_gguf": {"path": str(q4)}, "steps": 4},
        "broken": {**common, "transformer_gguf": {"path": str(broken)}, "steps": 4},
        "cut": {**common, "transformer_gguf": {"path": str(root / "gguf-files" / "cut-Q8_0.gguf")}, "steps": 4},
        "other": {**common, "transformer_gguf": {"path": str(root / "gguf-files" / "other-model-Q8_0.gguf")},
                  "steps": 4},
    }
    yield deploy("gguf", "/gguf", wait_workers=True, presets=presets, default_preset="g4")
    remove_app("gguf")


def _edit(api, preset, seed=5):
    r = api.http.post("/api/v1/edit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": "make it gold", "seed": str(seed), "preset": preset})
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


SENTENCE = ("Preset broken cannot use its GGUF transformer broken-Q4_0.gguf (presets.broken.transformer_gguf): "
            "it is not a GGUF file.")


def test_gguf_presets_run_and_switch_their_lora_exactly(gguf_api):
    four = _edit(gguf_api, "g4")
    base = _edit(gguf_api, "g40")
    again = _edit(gguf_api, "g4")
    back = _edit(gguf_api, "g40")
    q4 = _edit(gguf_api, "q4")
    assert not np.array_equal(four, base)  # the LoRA changes the output
    assert np.array_equal(four, again) and np.array_equal(base, back)  # 4 -> 40 -> 4 -> 40: identical pixels
    assert q4.shape == four.shape and not np.array_equal(q4, four)
    running = gguf_api.http.get("/api/v1/health").json()["workers"][0]["running"]["presets"]
    assert running["g4"]["profile"] == "bf16"  # the worker's text encoder format; the transformer is the file's


def test_a_file_that_is_not_gguf_is_refused_by_name_and_health_says_so(gguf_api):
    health = gguf_api.http.get("/api/v1/health")
    body = health.json()
    assert health.status_code == 200 and body["status"] == "degraded" and body["model_loaded"]
    assert any(w.startswith(SENTENCE) for w in body["warnings"]), body["warnings"]
    refused = body["workers"][0]["refused"]
    assert refused["broken"].startswith(SENTENCE) and set(refused) == {"broken", "cut", "other"}
    assert "cut-Q8_0.gguf (presets.cut.transformer_gguf): it is damaged or truncated" in refused["cut"]
    assert "other-model-Q8_0.gguf (presets.other.transformer_gguf): it is not a transformer of this model" \
        in refused["other"]
    assert sorted(w.split()[1] for w in body["warnings"] if w.startswith("Preset ")) == ["broken", "cut", "other"]
    assert "gguf-files" not in str(body)  # the file by name, never its folder
    model = gguf_api.http.get("/api/v1/models").json()["models"]["broken"]
    assert model["available"] is False and model["missing"].startswith(SENTENCE)
    submitted = gguf_api.submit(IMAGE, preset="broken")
    assert submitted.status_code == 400 and submitted.json()["detail"].startswith(SENTENCE)
    edited = gguf_api.http.post("/api/v1/edit", files={"image": ("a.png", IMAGE, "image/png")},
                                data={"instruction": "x", "preset": "broken"})
    assert edited.status_code == 400 and edited.json()["detail"].startswith(SENTENCE)
    # the worker was not restarted and serves the good presets
    ok = gguf_api.wait(gguf_api.submit(IMAGE, preset="q4").json()["job_id"])
    assert ok["status"] == "completed"


def test_a_step_cache_on_gguf_weights_says_how_many_steps_ran_in_full(gguf_api):
    def job(preset):
        done = gguf_api.wait(gguf_api.submit(IMAGE, preset=preset, seed=11).json()["job_id"])
        assert done["status"] == "completed", done
        return done, gguf_api.http.get(f"/api/v1/status/{done['job_id']}/result").content

    plain, plain_png = job("g40")
    fast, fast_png = job("g40-fast")
    again, again_png = job("g40")
    assert plain["full_steps"] == plain["total_steps"] == 6
    assert 2 <= fast["full_steps"] < 6 and fast["total_steps"] == 6
    assert plain_png == again_png != fast_png  # the cache never leaks into the preset without one
    models = gguf_api.http.get("/api/v1/models").json()["models"]
    assert models["g40-fast"]["step_cache"] is True and models["g40"]["step_cache"] is False
