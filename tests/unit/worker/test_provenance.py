"""Issue 23: what is running, read from the files: a hub base's snapshot revision (from a Hugging
Face cache laid out as the hub client lays it), a local folder's fingerprint, each LoRA's SHA-256,
the library versions; nothing shown to stations names a server path."""

import hashlib
import importlib.metadata
import json

import huggingface_hub.constants
import pytest

from serve_app.presets import build_registry
from serve_app.worker import provenance

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A cache holding Org/Edit's model_index.json and Org/Loras' LoRA file at revision REV."""
    cache = tmp_path / "hub"
    for repo, name, data in (("Org/Edit", "model_index.json", b"{}"), ("Org/Loras", "l/fast.safetensors", b"lora"),
                             ("Org/Edit-GGUF", "Edit-Q4_K_M.gguf", b"GGUF")):
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(REV)
        target = folder / "snapshots" / REV / name
        target.parent.mkdir(parents=True)
        target.write_bytes(data)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_hub_base_shows_its_snapshot_revision_and_a_hub_lora_its_sha256(hub_cache):
    preset = build_registry({"p": {"base": "Org/Edit", "steps": 4, "cfg_scale": 1.0, "nominal_seconds": 1,
                                   "lora": {"repo": "Org/Loras", "file": "l/fast.safetensors"},
                                   "transformer_gguf": {"repo": "Org/Edit-GGUF", "file": "Edit-Q4_K_M.gguf"}}})["p"]
    found = provenance.describe(preset, None, "fp8")
    shown = provenance.public(found)
    assert shown == {"base": {"source": "hub", "base": "Org/Edit", "revision": REV, "folder": None,
                              "fingerprint": None},
                     "loras": [{"file": "fast.safetensors", "repo": "Org/Loras", "revision": REV,
                                "sha256": hashlib.sha256(b"lora").hexdigest()}],
                     # a GGUF by size and ends (a whole 13 GB file would hold up each start)
                     "transformer_gguf": {"file": "Edit-Q4_K_M.gguf", "repo": "Org/Edit-GGUF", "revision": REV,
                                          "fingerprint": hashlib.sha256(b"4\0GGUF").hexdigest()},
                     "profile": "fp8"}
    assert str(hub_cache) not in json.dumps(shown)
    assert str(hub_cache) in provenance.log_line("p", found, provenance.libraries())  # the operator's log has it
    assert f"Org/Edit @ {REV}" in provenance.log_line("p", found, {})


def test_a_local_folder_shows_its_name_and_a_fingerprint_that_follows_its_files(tmp_path):
    folder = tmp_path / "secret" / "my-edit-model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "transformer" / "w.safetensors").write_bytes(b"x" * 1000)
    lora = tmp_path / "secret" / "mine.safetensors"
    lora.write_bytes(b"weights")
    preset = build_registry({"p": {"base": str(folder), "steps": 4, "cfg_scale": 1.0, "nominal_seconds": 1,
                                   "lora": {"path": str(lora)}}})["p"]
    first = provenance.public(provenance.describe(preset, str(folder), "bf16"))
    assert first["base"]["source"] == "local" and first["base"]["folder"] == "my-edit-model"
    assert first["loras"] == [{"file": "mine.safetensors", "repo": None, "revision": None,
                               "sha256": hashlib.sha256(b"weights").hexdigest()}]
    assert "secret" not in json.dumps(first)
    assert provenance.fingerprint(folder) == first["base"]["fingerprint"]
    (folder / "transformer" / "w.safetensors").write_bytes(b"y" * 1000)  # same size, other weights
    assert provenance.fingerprint(folder) != first["base"]["fingerprint"]


def test_a_large_file_counts_by_size_and_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "WHOLE_FILE_BYTES", 4 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (8 << 20))
    before = provenance.fingerprint(tmp_path)
    with open(big, "r+b") as f:
        f.seek(4 << 20)
        f.write(b"middle")  # not read: the middle of a large file
    assert provenance.fingerprint(tmp_path) == before
    with open(big, "r+b") as f:
        f.seek((8 << 20) - 3)
        f.write(b"end")
    assert provenance.fingerprint(tmp_path) != before


def test_library_versions_are_the_installed_ones():
    versions = provenance.libraries()
    assert list(versions) == ["torch", "diffusers", "transformers", "peft"]
    assert versions["diffusers"] == importlib.metadata.version("diffusers")
    assert versions["torch"] == importlib.metadata.version("torch")
