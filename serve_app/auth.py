"""API keys: where they come from, and the constant-time check at the edge.

There is no built-in key. In order of precedence:
1. ``QWEN_API_KEY`` (the earlier deployment's variable): one key.
2. The key file (``api_key_file`` in config/serve.yaml, default ``<state_dir>/api_key``): one key per
   line, ``#`` comments allowed.
3. Neither: a random key is generated, written to the key file with mode 0600, and printed once.

Only SHA-256 digests of the keys travel to the ingress replicas; presented keys are hashed and
compared with ``hmac.compare_digest`` against every digest, so timing reveals nothing.
"""

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

ENV_KEY = "QWEN_API_KEY"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Keyring:
    digests: tuple[bytes, ...]

    def check(self, presented: str | None) -> bool:
        if not presented:
            return False
        given = digest(presented)
        ok = False
        for d in self.digests:  # no early exit: the time does not depend on which key matched
            ok |= hmac.compare_digest(given, d)
        return ok


def _read_key_file(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def load_keyring(key_file: str | os.PathLike, environ=os.environ) -> tuple[Keyring, str]:
    """The keyring and one sentence for the operator's log (it contains the key only when generated)."""
    env_key = environ.get(ENV_KEY, "").strip()
    if env_key:
        return Keyring((digest(env_key),)), f"API key: taken from ${ENV_KEY}."
    path = Path(key_file)
    if path.exists():
        keys = _read_key_file(path)
        if not keys:
            raise ValueError(f"the API key file {path} holds no key; put one key per line or delete it")
        return Keyring(tuple(digest(k) for k in keys)), f"API key: read from {path}."
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return Keyring((digest(key),)), (
        f"API key: none was configured, so one was generated and stored in {path} (mode 0600): {key}  "
        "Send it in the X-API-Key header."
    )
