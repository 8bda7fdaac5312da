"""Presets (``serve_app.presets``): names, aliases, and what a preset without its weights says."""

import pytest

from serve_app.errors import BadRequest, PresetUnavailable
from serve_app.presets import build_registry, missing_weights, require_available, resolve


def test_aliases_resolve_to_canonical_presets():
    reg = build_registry({})
    for alias, name in [("4-step", "qwen-4step"), ("8-step", "qwen-8step"), ("40-step", "qwen-40step"),
                        ("qwen-4step", "qwen-4step"), ("tiny", "tiny")]:
        assert resolve(reg, alias).name == name
    with pytest.raises(BadRequest) as err:
        resolve(reg, "16-step")
    assert "Choose one of" in err.value.detail


def test_real_presets_say_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    reg = build_registry({})
    assert missing_weights(reg["tiny"]) is None
    with pytest.raises(PresetUnavailable) as err:
        require_available(reg["qwen-4step"])
    assert "Qwen/Qwen-Image-Edit-2509" in err.value.detail and "config/serve.yaml" in err.value.detail
    local = build_registry({"qwen-40step": {"base": str(tmp_path / "nowhere")}})
    detail = missing_weights(local["qwen-40step"])
    assert "model_index.json" in detail and "presets.qwen-40step.base" in detail
    assert str(tmp_path) not in detail  # never a server path in what stations see
    assert local["qwen-40step"].model_name == "nowhere"


def test_operator_presets_and_alias_clash():
    reg = build_registry({"fast-tiny": {"base": "builtin:tiny", "steps": 2, "cfg_scale": 1.0,
                                        "nominal_seconds": 0.5, "aliases": ["ft"]}})
    assert resolve(reg, "ft").steps == 2
    with pytest.raises(ValueError):
        build_registry({"other": {"base": "builtin:tiny", "steps": 2, "cfg_scale": 1.0,
                                  "nominal_seconds": 1, "aliases": ["4-step"]}})
