import os
import stat

import pytest

from serve_app.auth import ENV_KEY, load_keyring
from serve_app.errors import BadRequest, PresetUnavailable
from serve_app.presets import build_registry, missing_weights, require_available, resolve
from serve_app.storage import ResultStore, result_name


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


def test_generated_key_is_stored_private_and_printed_once(tmp_path):
    path = tmp_path / "state" / "api_key"
    ring, message = load_keyring(path, environ={})
    key = path.read_text().strip()
    assert key in message and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ring.check(key) and not ring.check(key + "x") and not ring.check(None) and not ring.check("")
    ring2, message2 = load_keyring(path, environ={})
    assert key not in message2 and ring2.check(key)  # later starts do not print it again


def test_env_key_wins(tmp_path):
    ring, message = load_keyring(tmp_path / "api_key", environ={ENV_KEY: "s3cret"})
    assert ring.check("s3cret") and "s3cret" not in message and not (tmp_path / "api_key").exists()


def test_result_names_and_store(tmp_path):
    name = result_name("qwen-4step", 1705314685, 42, "a1b2c3d4-4a5d-4e8f-9c2a-1b3d4e5f6a7b")
    assert name == "qwen-4step_20240115_103125_s42_a1b2c3d4.png"
    store = ResultStore(tmp_path / "results")
    store.write(name, b"png")
    assert store.read(name) == b"png" and store.names() == [name]
    store.delete(name)
    assert store.names() == []
    for bad in ["../x.png", "/etc/passwd", "a/../../b.png"]:
        with pytest.raises(ValueError):
            store.read(bad)


def test_worker_block_of_the_yaml_reaches_the_worker_settings(tmp_path):
    from serve_app.config import AppArgs
    from serve_app.deployments import worker_settings

    args = AppArgs.model_validate({"state_dir": str(tmp_path), "worker": {
        "attention_backend": "flash", "compile": True, "warmup": True, "torch_threads": 3,
        "png_compress_level": 6, "device": "cpu"}})
    s = worker_settings(args, build_registry({}), "tiny")
    assert (s.attention_backend, s.compile, s.warmup, s.torch_threads, s.png_compress_level, s.device) == (
        "flash", True, True, 3, 6, "cpu")
    assert s.preload.name == "tiny" and s.models_dir == str((tmp_path / "models").resolve())
    assert worker_settings(args, build_registry({}), "qwen-4step").preload is None  # weights absent


def test_storage_faults_are_named_in_words_an_operator_acts_on(tmp_path):
    import errno

    from serve_app.storage import ResultStore, storage_reason

    assert storage_reason(OSError(errno.ENOSPC, "No space left on device")) == \
        "the disk holding the results folder is full"
    assert storage_reason(OSError(errno.EROFS, "Read-only file system")) == "the results folder is not writable"
    assert storage_reason(FileNotFoundError(errno.ENOENT, "x")) == "the results folder is missing"
    store = ResultStore(tmp_path / "results")
    assert store.problem(0) is None
    assert "MB free, less than min_free_disk_mb (1048576): jobs fail" in store.problem(2**40)  # 1 TiB: more than free
    (tmp_path / "results").rmdir()
    assert store.problem(0) == "The results folder is missing: results cannot be stored until it is back."
