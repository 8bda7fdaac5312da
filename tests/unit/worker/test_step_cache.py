"""A preset's step cache (cache-dit) on the tiny model: it skips work, it never leaks into a preset
without one (exact pixels), switching back re-arms it, and the engine says how many steps ran in full."""

import io

import numpy as np
import pytest
from PIL import Image

from serve_app.presets import build_registry
from serve_app.worker.engine import EditEngine
from serve_app.worker.tiny_model import random_lightning_lora
from tests.helpers import photo

COMMON = {"base": "builtin:tiny", "resolution": 256, "nominal_seconds": 1.0, "cfg_scale": 1.0, "steps": 10}
# The tiny model's random blocks change little between steps: a loose threshold caches most of them.
CACHE = {"threshold": 0.5, "warmup_steps": 2, "warmup_interval": 1, "max_continuous_cached_steps": 2}


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    engine = EditEngine(str(tmp_path_factory.mktemp("models")))
    engine.ensure(build_registry({"tiny": {"resolution": 256}})["tiny"])
    lora = random_lightning_lora(engine.pipe.transformer, tmp_path_factory.mktemp("l") / "l.safetensors", seed=4)
    reg = build_registry({
        "plain": COMMON,
        "fast": {**COMMON, "step_cache": CACHE},
        "cfg": {**COMMON, "cfg_scale": 4.0},
        "cfg-fast": {**COMMON, "cfg_scale": 4.0, "step_cache": CACHE},
        "lora-fast": {**COMMON, "lora": {"path": str(lora)}, "step_cache": CACHE},
    })
    return engine, reg


def _run(engine, preset, seed=3):
    result = engine.run(preset, photo(256, 256, seed=2), "make the sky blue", seed=seed)
    return np.asarray(Image.open(io.BytesIO(result.png))), engine.full_steps


def test_the_cache_skips_steps_and_never_leaks_into_a_preset_without_one(cached):
    engine, reg = cached
    plain, plain_full = _run(engine, reg["plain"])
    fast, fast_full = _run(engine, reg["fast"])
    assert plain_full == 10 and 2 <= fast_full < 10  # the warm-up in full, then some steps from the cache
    assert not np.array_equal(plain, fast)
    again, _ = _run(engine, reg["plain"])
    assert np.array_equal(plain, again)  # the hooks came off: the bare pipeline, pixel for pixel
    back, back_full = _run(engine, reg["fast"])
    assert np.array_equal(fast, back) and back_full == fast_full  # re-armed as before


def test_cfg_presets_cache_both_passes_and_count_steps_not_passes(cached):
    engine, reg = cached
    plain, full = _run(engine, reg["cfg"])
    fast, fast_full = _run(engine, reg["cfg-fast"])
    assert full == 10 and 2 <= fast_full < 10
    assert np.array_equal(plain, _run(engine, reg["cfg"])[0])


def test_a_cached_lora_preset_then_an_uncached_bare_one_gives_the_bare_pixels(cached):
    engine, reg = cached
    plain, _ = _run(engine, reg["plain"], seed=8)
    _, full = _run(engine, reg["lora-fast"], seed=8)
    assert full < 10
    assert np.array_equal(plain, _run(engine, reg["plain"], seed=8)[0])
    assert reg["fast"].public()["step_cache"] is True and reg["plain"].public()["step_cache"] is False


def test_a_job_cancelled_mid_cache_leaves_the_next_one_as_if_it_had_not_run(cached):
    from serve_app.worker.engine import JobCancelled

    engine, reg = cached
    before, full = _run(engine, reg["fast"], seed=12)

    def stop(step, total):
        if step == 5:
            raise JobCancelled("j")

    with pytest.raises(JobCancelled):
        engine.generate(reg["fast"], [photo(256, 256, seed=2)], "make the sky blue", 12, on_step=stop)
    after, again = _run(engine, reg["fast"], seed=12)
    assert np.array_equal(before, after) and full == again  # the cache's state starts anew each job
