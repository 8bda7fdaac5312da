"""API keys (``serve_app.auth``): the generated key, the env key, and stations' keys files."""

import hashlib
import json
import os
import stat

import pytest

from serve_app.auth import ENV_KEY, ENV_KEYS_FILE, Caller, job_priority, load_keyring
from serve_app.errors import Forbidden

A, B, OPS = "key-of-station-a-0123456789", "key-of-station-b-0123456789", "key-of-the-operators-012345"


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


def test_keys_file_maps_keys_to_stations_plain_hashed_and_admin(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"A: {A}\nB: sha256:{hashlib.sha256(B.encode()).hexdigest()}\n"
                    f"ops: {{key: {OPS}, admin: true}}\n")
    ring, message = load_keyring(tmp_path / "api_key", environ={}, keys_file=path)
    assert ring.identify(A) == Caller("A", False) and ring.identify(B) == Caller("B", False)
    assert ring.identify(OPS) == Caller("ops", True)
    assert ring.identify("nope") is None and ring.identify(None) is None and ring.identify("") is None
    assert "3 station(s)" in message and A not in message
    assert not (tmp_path / "api_key").exists()  # no single key generated beside a keys file


def test_keys_file_as_json_from_env_and_the_single_env_key_beside_it(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"stations": {"A": {"key_sha256": hashlib.sha256(A.encode()).hexdigest()}}}))
    ring, _ = load_keyring(tmp_path / "api_key", environ={ENV_KEYS_FILE: str(path), ENV_KEY: OPS},
                           keys_file=tmp_path / "ignored.yaml")
    assert ring.identify(A) == Caller("A", False)
    assert ring.identify(OPS) == Caller("default", True)  # QWEN_API_KEY keeps working


@pytest.mark.parametrize("content, fragment", [
    ("A: short\n", "at least 16 characters"),
    ("'bad name!': " + A + "\n", "station name"),
    (f"A: {A}\nB: {A}\n", "the same key"),
    ("A: sha256:xyz\n", "64-character hex"),
    (f"A: {{key: {A}, key_sha256: abc}}\n", "exactly one of key or key_sha256"),
    (f"A: {{key: {A}, admin: maybe}}\n", "admin must be true or false"),
    (f"A: {{key: {A}, priority: urgent}}\n", "priority must be one of low, normal, high"),
    ("[1, 2]\n", "must map station names to keys"),
    ("A: [unclosed\n", "not valid YAML"),
])
def test_keys_file_mistakes_are_named(tmp_path, content, fragment):
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        load_keyring(tmp_path / "api_key", environ={}, keys_file=path)
    assert fragment in str(err.value)


def test_missing_keys_file_is_an_error_not_an_open_door(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_keyring(tmp_path / "api_key", environ={}, keys_file=tmp_path / "nope.yaml")


def test_a_key_carries_a_priority_and_requests_may_ask_for_less(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(f"A: {{key: {A}, priority: high}}\nB: {{key: {B}, priority: low}}\nops: {OPS}\n")
    ring, _ = load_keyring(tmp_path / "api_key", environ={}, keys_file=path)
    a, b, ops = ring.identify(A), ring.identify(B), ring.identify(OPS)
    assert (a.priority, b.priority, ops.priority) == ("high", "low", "normal")
    assert job_priority(None, a) == "high" and job_priority("low", a) == "low"
    assert job_priority(None, b) == "low"
    with pytest.raises(Forbidden) as err:
        job_priority("normal", b)
    assert err.value.status_code == 403
    assert err.value.detail == ("Priority normal is higher than this station's key allows (low); ask for low or "
                                "lower, or leave priority out.")
