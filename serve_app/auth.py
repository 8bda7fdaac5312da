"""API keys: which station a key belongs to, and the constant-time check at the edge.

There is no built-in key. Where keys come from:
1. A stations' keys file (``api_keys_file`` in config/serve.yaml, or ``QWEN_API_KEYS_FILE``, which
   wins): YAML or JSON mapping each station's name to its key, to ``sha256:<hex digest of the key>``,
   or to ``{key: ..., admin: true, priority: high}`` (``key_sha256`` instead of ``key``; ``admin``
   and ``priority`` optional). A station sees, cancels and downloads only its own jobs; an admin key
   sees every station's. ``priority`` (``high``, ``normal`` (the default), ``low``) is the priority
   the station's jobs get, and the highest one its requests may ask for.
2. ``QWEN_API_KEY`` (the earlier deployment's variable): one key, station ``default``, admin. It also
   works beside a keys file.
3. Neither: the single-key file (``api_key_file``, default ``<state_dir>/api_key``), one key per line;
   if it does not exist, a random key is generated, written there with mode 0600 and printed once.
   These keys are station ``default`` and admin (with one station, it sees everything, as before),
   at priority ``normal``.

Only SHA-256 digests of the keys travel to the ingress replicas; a presented key is hashed and
compared with ``hmac.compare_digest`` against every digest, so timing reveals nothing.
"""

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import Forbidden

ENV_KEY = "QWEN_API_KEY"
ENV_KEYS_FILE = "QWEN_API_KEYS_FILE"
DEFAULT_STATION = "default"
# A job's priority, lowest first; a key's priority (the keys file) is the highest it may ask for.
PRIORITIES = ("low", "normal", "high")
STATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Caller:
    """Who is calling: the station a key belongs to, whether it may see every station's jobs, and
    the highest priority its jobs may have (their default too)."""

    station: str
    admin: bool = False
    priority: str = "normal"


def job_priority(requested: str | None, caller: Caller) -> str:
    """The priority of a job the caller submits: the one it asked for (None: its key's).
    ``Forbidden`` when that is higher than its key's."""
    if requested is None or requested == caller.priority:
        return caller.priority
    if PRIORITIES.index(requested) > PRIORITIES.index(caller.priority):
        raise Forbidden(f"Priority {requested} is higher than this station's key allows ({caller.priority}); "
                        f"ask for {caller.priority} or lower, or leave priority out.")
    return requested


@dataclass(frozen=True)
class KeyEntry:
    digest: bytes  # sha256 of the key
    station: str
    admin: bool = False
    priority: str = "normal"


@dataclass(frozen=True)
class Keyring:
    entries: tuple[KeyEntry, ...]

    def identify(self, presented: str | None) -> Caller | None:
        if not presented:
            return None
        given = digest(presented)
        found = None
        for e in self.entries:  # no early exit: the time does not depend on the match
            if hmac.compare_digest(given, e.digest):
                found = Caller(e.station, e.admin, e.priority)
        return found

    def check(self, presented: str | None) -> bool:
        return self.identify(presented) is not None


def _read_key_file(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _station_entry(path: Path, station, value) -> KeyEntry:
    where = f"the keys file {path}, station {station!r}"
    if not isinstance(station, str) or not STATION_NAME.match(station):
        raise ValueError(f"{where}: a station name is 1-64 letters, digits, '.', '_' or '-'")
    admin, priority = False, "normal"
    if isinstance(value, dict):
        unknown = set(value) - {"key", "key_sha256", "admin", "priority"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; use key or key_sha256, admin "
                             "and priority")
        admin = value.get("admin", False)
        if not isinstance(admin, bool):
            raise ValueError(f"{where}: admin must be true or false")
        priority = value.get("priority", "normal")
        if priority not in PRIORITIES:
            raise ValueError(f"{where}: priority must be one of {', '.join(PRIORITIES)}")
        if ("key" in value) == ("key_sha256" in value):
            raise ValueError(f"{where}: give exactly one of key or key_sha256")
        value = value["key"] if "key" in value else f"sha256:{value['key_sha256']}"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: the key must be a non-empty string")
    value = value.strip()
    if value.startswith("sha256:"):
        hexdigest = value.removeprefix("sha256:").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
            raise ValueError(f"{where}: sha256: must be followed by the key's 64-character hex digest")
        return KeyEntry(bytes.fromhex(hexdigest), station, admin, priority)
    if len(value) < 16:
        raise ValueError(f"{where}: keys must be at least 16 characters long")
    return KeyEntry(digest(value), station, admin, priority)


def read_keys_file(path: Path) -> list[KeyEntry]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise ValueError(f"the keys file {path} is not valid YAML or JSON: {exc}") from None
    if isinstance(data, dict) and set(data) == {"stations"}:
        data = data["stations"]
    if not isinstance(data, dict) or not data:
        raise ValueError(f"the keys file {path} must map station names to keys")
    entries = [_station_entry(path, station, value) for station, value in data.items()]
    seen: dict[bytes, str] = {}
    for e in entries:
        if e.digest in seen:
            raise ValueError(f"the keys file {path}: stations {seen[e.digest]!r} and {e.station!r} have the same key")
        seen[e.digest] = e.station
    return entries


def load_keyring(key_file: str | os.PathLike, environ=os.environ,
                 keys_file: str | os.PathLike | None = None) -> tuple[Keyring, str]:
    """The keyring and one sentence for the operator's log (it contains the key only when generated)."""
    env_key = environ.get(ENV_KEY, "").strip()
    stations_file = environ.get(ENV_KEYS_FILE, "").strip() or keys_file
    if stations_file:
        path = Path(stations_file).expanduser()
        if not path.exists():
            raise ValueError(f"the stations' keys file {path} does not exist")
        entries = read_keys_file(path)
        if env_key:
            entries.append(KeyEntry(digest(env_key), DEFAULT_STATION, True))
        names = sorted({e.station for e in entries})
        return Keyring(tuple(entries)), (f"API keys: {len(names)} station(s) from {path}"
                                         + (f" and ${ENV_KEY}" if env_key else "") + f": {', '.join(names)}.")
    if env_key:
        return Keyring((KeyEntry(digest(env_key), DEFAULT_STATION, True),)), f"API key: taken from ${ENV_KEY}."
    path = Path(key_file)
    if path.exists():
        keys = _read_key_file(path)
        if not keys:
            raise ValueError(f"the API key file {path} holds no key; put one key per line or delete it")
        return Keyring(tuple(KeyEntry(digest(k), DEFAULT_STATION, True) for k in keys)), f"API key: read from {path}."
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return Keyring((KeyEntry(digest(key), DEFAULT_STATION, True),)), (
        f"API key: none was configured, so one was generated and stored in {path} (mode 0600): {key}  "
        "Send it in the X-API-Key header."
    )
