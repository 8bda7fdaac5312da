"""Webhooks: tell a station's server when its job is done, signed, retried, never blocking the queue.

Who may be called: only hosts on the YAML's ``webhooks.allowed_hosts`` (empty by default, and then
the ``webhook_url`` field is refused), so the server cannot be used to reach internal addresses.

What is sent: ``POST <webhook_url>`` with the job's status JSON (the body of GET /status/{id}) and
    X-Webhook-Id: <job id>            X-Webhook-Timestamp: <unix seconds>
    X-Webhook-Event: started | completed | failed | cancelled
    X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>
A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes, compares in constant
time, and rejects timestamps older than a few minutes (``verify`` below is the reference).

Delivery runs as a background task of the queue; a failed attempt (connection error or a non-2xx
answer) is retried with exponential backoff until ``retry_seconds`` have passed, then given up and
logged. The job's state never depends on it.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from .errors import BadRequest
from .logs import for_job

log = logging.getLogger(__name__)
ENV_SECRET = "QWEN_WEBHOOK_SECRET"
MAX_URL_CHARS = 2000


class DeliveryFailed(Exception):
    pass


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """The receiver's check: a fresh timestamp and a matching signature over timestamp and body."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature or "")


def check_url(url: str, allowed_hosts: tuple[str, ...]) -> str:
    """The URL if webhooks may go there; ``BadRequest`` with what to fix otherwise."""
    url = url.strip()
    if not allowed_hosts:
        raise BadRequest("Webhooks are not enabled on this server (no host is allowed); leave webhook_url "
                         "out and poll the status, or ask the operator to allow your host.")
    if len(url) > MAX_URL_CHARS:
        raise BadRequest(f"webhook_url is too long (at most {MAX_URL_CHARS} characters).")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequest("webhook_url is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("webhook_url must be an http:// or https:// URL with a host.")
    if parts.username or parts.password:
        raise BadRequest("webhook_url must not contain a user name or password.")
    host = parts.hostname.lower()
    allowed = {h.lower() for h in allowed_hosts}
    if host not in allowed and (port is None or f"{host}:{port}" not in allowed):
        raise BadRequest(f"webhook_url host {host} is not on this server's allow-list of webhook hosts.")
    return url


def load_secret(secret_file: Path, environ=os.environ) -> bytes:
    """``QWEN_WEBHOOK_SECRET``, else the secret file (made with mode 0600 when missing)."""
    env = environ.get(ENV_SECRET, "").strip()
    if env:
        return env.encode()
    if secret_file.exists():
        value = secret_file.read_text(encoding="utf-8").strip()
        if not value:
            raise ValueError(f"the webhook secret file {secret_file} is empty")
        return value.encode()
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value.encode()


class Notifier:
    """Sends signed webhooks in background tasks; ``delivered`` / ``given_up`` count outcomes."""

    def __init__(self, secret: bytes, retry_seconds: float, timeout_seconds: float):
        self.secret, self.retry_seconds, self.timeout_seconds = secret, retry_seconds, timeout_seconds
        self.delivered = 0
        self.given_up = 0
        self._tasks: set[asyncio.Task] = set()

    def send(self, url: str, payload: dict, event: str) -> None:
        """Deliver ``payload`` (the job's status) for ``event`` in the background, with retries."""
        task = asyncio.get_running_loop().create_task(self._deliver(url, payload, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, payload: dict, event: str) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        job_id = str(payload.get("job_id", ""))
        attempts = 0
        try:
            async with httpx.AsyncClient(timeout=self.timeout_seconds, follow_redirects=False) as client:
                async for attempt in AsyncRetrying(
                        stop=stop_after_delay(self.retry_seconds), wait=wait_exponential(multiplier=0.5, max=10),
                        retry=retry_if_exception_type((httpx.HTTPError, DeliveryFailed)), reraise=True):
                    with attempt:
                        attempts += 1
                        ts = int(time.time())
                        r = await client.post(url, content=body, headers={
                            "Content-Type": "application/json", "User-Agent": "qwen-image-edit-webhooks",
                            "X-Webhook-Id": job_id, "X-Webhook-Event": event, "X-Webhook-Timestamp": str(ts),
                            "X-Webhook-Signature": sign(self.secret, ts, body)})
                        if not 200 <= r.status_code < 300:
                            raise DeliveryFailed(f"answered {r.status_code}")
            self.delivered += 1
            log.info("[JobQueue] Webhook for job %s delivered (attempt %d)", job_id[:8], attempts,
                     extra=for_job(job_id))
        except Exception as exc:
            self.given_up += 1
            log.warning("[JobQueue] Webhook for job %s given up after %d attempts: %s", job_id[:8], attempts,
                        exc, extra=for_job(job_id))
