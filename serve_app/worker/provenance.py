"""What a worker really runs, so that a change in the pictures can be traced to a change of files or
libraries: for each preset its base (a hub id with the snapshot revision the Hugging Face cache
resolves it to, or a local folder with a fingerprint of its files), each LoRA file with its SHA-256,
the memory/precision profile, and the versions of torch, diffusers, transformers and peft.

Read from the files on this machine, without loading a model and without the network. What is shown
to stations names no server path: a local folder by its name only (the worker's start-up log, for
the operator, has the whole path).
"""

import hashlib
import importlib.metadata
import os
import re
from pathlib import Path

from ..presets import BUILTIN_TINY, WeightFile, Preset, looks_local

LIBRARIES = ("torch", "diffusers", "transformers", "peft")
WHOLE_FILE_BYTES = 64 * 1024 * 1024  # larger files enter a folder's fingerprint by size and ends
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})(?:/|$)")
_digests: dict[tuple, str] = {}  # (real path, size, mtime) -> SHA-256: each file is read once per process


def libraries() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_file(path: str | Path) -> str:
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            while chunk := f.read(4 * 1024 * 1024):
                h.update(chunk)
        _digests[key] = h.hexdigest()
    return _digests[key]


def fingerprint(folder: str | Path) -> str:
    """SHA-256 over every file of ``folder`` (relative path and content; a file over 64 MiB by its
    size and its first and last MiB, so that a 40 GB folder is fingerprinted in a moment). Changes
    when a config, the tokenizer or a weight file is replaced; symlinks are followed (hub snapshots)."""
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0".encode())
        _fingerprint_into(h, path)
    return h.hexdigest()


def _fingerprint_into(h, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_BYTES:
            h.update(f.read())
        else:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's size and content, a file over 64 MiB by its size and first and last MiB
    (a 13 GB GGUF in a moment; hashing all of it would hold up every start by a minute)."""
    h = hashlib.sha256()
    _fingerprint_into(h, Path(path))
    return h.hexdigest()


def _revision(path: str | Path) -> str | None:
    m = _SNAPSHOT.search(str(path))
    return m.group(1) if m else None


def _hub_file(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=repo, filename=filename)
    return found if isinstance(found, str) else None


def base_of(preset: Preset, folder: str | None) -> dict:
    """``folder``: where the worker loads a builtin or local base from (None for a hub id)."""
    if preset.base != BUILTIN_TINY and not looks_local(preset.base):
        index = _hub_file(preset.base, "model_index.json")
        return {"source": "hub", "base": preset.base, "revision": index and _revision(index),
                "folder": None, "fingerprint": None, "path": index and str(Path(index).parent)}
    path = Path(folder or preset.base).expanduser()
    return {"source": "builtin" if preset.base == BUILTIN_TINY else "local", "base": preset.model_name,
            "revision": _revision(path.resolve()), "folder": path.name, "fingerprint": fingerprint(path),
            "path": str(path)}


def lora_of(lora: WeightFile) -> dict:
    if lora.path:
        path, repo = str(Path(lora.path).expanduser()), None
    else:
        path, repo = _hub_file(lora.repo, lora.file), lora.repo
    return {"file": Path(lora.file or lora.path).name, "repo": repo, "revision": path and _revision(path),
            "sha256": path and sha256_file(path), "path": path}


def gguf_of(spec: WeightFile) -> dict:
    """A GGUF transformer file: its name, hub repo and revision, and ``file_fingerprint``."""
    path = spec.local_path()
    return {"file": spec.name, "repo": spec.repo, "revision": path and _revision(path),
            "fingerprint": path and file_fingerprint(path), "path": path}


def describe(preset: Preset, folder: str | None, profile: str | None) -> dict:
    """What ``preset`` runs on this machine. The ``path`` entries are for the operator's log;
    ``public`` removes them."""
    return {"base": base_of(preset, folder), "loras": [lora_of(preset.lora)] if preset.lora else [],
            "transformer_gguf": gguf_of(preset.transformer_gguf) if preset.transformer_gguf else None,
            "profile": profile}


def _without_path(entry: dict | None) -> dict | None:
    return entry and {k: v for k, v in entry.items() if k != "path"}


def public(described: dict) -> dict:
    """``describe``'s answer without server paths (for /health and /models)."""
    return {**described, "base": _without_path(described["base"]),
            "loras": [_without_path(lora) for lora in described["loras"]],
            "transformer_gguf": _without_path(described.get("transformer_gguf"))}


def log_line(name: str, described: dict, versions: dict) -> str:
    """One line for the worker's start-up log."""
    base = described["base"]
    where = (f"{base['base']} @ {base['revision'] or 'not in the cache'}" if base["source"] == "hub"
             else f"{base['path']} (fingerprint {base['fingerprint'][:16]}"
                  + (f", revision {base['revision']}" if base["revision"] else "") + ")")
    loras = "".join(f", LoRA {lora['path'] or lora['file']} sha256 {lora['sha256']}" for lora in described["loras"])
    gguf = described.get("transformer_gguf")
    if gguf:
        loras += f", transformer {gguf['path'] or gguf['file']} (fingerprint {(gguf['fingerprint'] or '-')[:16]})"
    libs = ", ".join(f"{k} {v}" for k, v in versions.items())
    return f"preset {name}: base {where}{loras}, profile {described['profile']}; {libs}"
