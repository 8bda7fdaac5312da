"""The model engine on the tiny model, through the same from_pretrained path as real presets."""

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from serve_app.pipeline import EditEngine, public_error
from serve_app.presets import build_registry
from serve_app.tiny_model import TEMPLATE_DROP_TOKENS, SYSTEM_PREFIX, ensure_tiny_model


def photo(w=512, h=512, seed=0):
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return EditEngine(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def tiny():
    return build_registry({"tiny": {"resolution": 256}})["tiny"]


def test_tiny_model_is_a_hub_style_snapshot(engine, tiny):
    engine.ensure(tiny)
    folder = engine.models_dir / "tiny"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    for part in ("transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"):
        assert (folder / part).is_dir() and part in index
    # the tokenizer reproduces the real template's 64-token system prefix the pipeline drops
    ids = engine.pipe.tokenizer(SYSTEM_PREFIX)["input_ids"]
    assert len(ids) == TEMPLATE_DROP_TOKENS
    assert ensure_tiny_model(folder) == folder  # idempotent: no rebuild


def test_same_seed_same_pixels_and_fast(engine, tiny):
    image = photo()
    engine.run(tiny, image, "warm up", seed=1)
    start = time.perf_counter()
    a = engine.run(tiny, image, "make the sky blue", seed=42)
    took = time.perf_counter() - start
    b = engine.run(tiny, image, "make the sky blue", seed=42)
    c = engine.run(tiny, image, "make the sky blue", seed=43)
    pa, pb, pc = (np.asarray(Image.open(io.BytesIO(r.png))) for r in (a, b, c))
    assert pa.shape == (256, 256, 3)
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)
    assert took < 2.0, f"a 512x512 tiny edit took {took:.2f}s on this machine"


def test_public_error_hides_paths():
    err = FileNotFoundError("[Errno 2] No such file: '/srv/secret/models/x.safetensors'")
    assert "/srv" not in public_error(err) and "<path>" in public_error(err)
    assert public_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")) == "CUDA out of memory"
