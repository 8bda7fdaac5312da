"""Stations' keys files and webhook signing/allow-list: plain functions, milliseconds."""

import hashlib
import json
import time

import pytest

from serve_app.auth import ENV_KEY, ENV_KEYS_FILE, Caller, load_keyring
from serve_app.errors import BadRequest
from serve_app.webhooks import check_url, load_secret, sign, verify

A, B, OPS = "key-of-station-a-0123456789", "key-of-station-b-0123456789", "key-of-the-operators-012345"


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


def test_signature_verifies_and_rejects_tampering_and_stale_timestamps():
    secret, body = b"s3cret", b'{"job_id":"j","status":"completed"}'
    now = int(time.time())
    sig = sign(secret, now, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify(secret, str(now), body, sig)
    assert not verify(secret, str(now), body + b" ", sig)
    assert not verify(b"other", str(now), body, sig)
    assert not verify(secret, str(now - 3600), body, sign(secret, now - 3600, body))  # replayed later
    assert not verify(secret, "soon", body, sig)


def test_webhook_urls_only_to_allowed_hosts():
    allowed = ("hooks.example.org", "127.0.0.1:9000")
    assert check_url("https://hooks.example.org/done", allowed) == "https://hooks.example.org/done"
    assert check_url("http://127.0.0.1:9000/x", allowed)
    for url, fragment in [("http://127.0.0.1:9001/x", "not on this server's allow-list"),
                          ("http://169.254.169.254/latest", "not on this server's allow-list"),
                          ("ftp://hooks.example.org/x", "http:// or https://"),
                          ("https://user:pw@hooks.example.org/", "user name or password"),
                          ("https://hooks.example.org:99999/", "not a valid URL"),
                          ("https://" + "a" * 3000, "too long")]:
        with pytest.raises(BadRequest) as err:
            check_url(url, allowed)
        assert fragment in err.value.detail, url
    with pytest.raises(BadRequest, match="not enabled"):
        check_url("https://hooks.example.org/done", ())


def test_webhook_secret_from_env_or_a_private_file(tmp_path):
    assert load_secret(tmp_path / "s", environ={"QWEN_WEBHOOK_SECRET": "abc"}) == b"abc"
    made = load_secret(tmp_path / "s", environ={})
    assert len(made) >= 32 and (tmp_path / "s").stat().st_mode & 0o777 == 0o600
    assert load_secret(tmp_path / "s", environ={}) == made


def test_every_queue_method_for_jobs_takes_the_caller_explicitly():
    """No method defaults the caller to the admin: a call that forgets it fails, never sees all jobs."""
    import inspect

    from serve_app.queue_actor import QueueActor

    cls = QueueActor.func_or_class
    for name in ("submit", "status", "cancel", "watch", "result", "wait", "station_jobs", "check_room",
                 "find_idempotent"):
        caller = inspect.signature(getattr(cls, name)).parameters["caller"]
        assert caller.default is inspect.Parameter.empty, name
