"""Webhooks (``serve_app.webhooks``): signing, the host allow-list, the secret file."""

import time

import pytest

from serve_app.errors import BadRequest
from serve_app.webhooks import check_url, load_secret, sign, verify


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
