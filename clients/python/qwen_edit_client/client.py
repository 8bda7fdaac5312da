"""A Python client for the stations' API (httpx), with typed results and safe retries.

    from qwen_edit_client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as c:
        job = c.submit(["photo.jpg"], "make the sky blue", seed=42)
        done = c.wait(job.job_id, on_update=print)   # events stream; polling if it is unavailable
        c.download(done.job_id, "out.png")

Guarantees:
- ``submit`` sends an ``Idempotency-Key`` (a new UUID per call unless given) and reuses it on every
  retry, so a retry after a lost answer never makes a second job;
- 429 (queue full, or the station's share) is retried after ``Retry-After`` seconds until
  ``wait_for_room`` seconds have passed (then ``QueueFull`` is raised); connection failures and 503
  are retried a few times with backoff; every other error is raised at once;
- errors are ``ApiError`` subclasses named for their HTTP status, carrying the server's sentence.
Only httpx, httpx-sse and pydantic are imported: no Ray, no torch (the package installs alone:
``pip install ./clients/python``).
"""

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from .models import (TERMINAL, HealthResponse, JobListResponse, JobStatus, JobStatusResponse, ModelsResponse,
                     QueueResponse, SubmitResponse)

DEFAULT_URL = "http://127.0.0.1:8000"
API = "/api/v1"


class ApiError(Exception):
    """The server refused or could not do it; ``detail`` is its sentence, ``status`` the HTTP code."""

    status: int | None = None

    def __init__(self, detail: str, status: int | None = None, response: httpx.Response | None = None):
        super().__init__(detail)
        self.detail = detail
        self.status = status if status is not None else type(self).status
        self.response = response


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class TooLarge(ApiError):
    status = 413


class Invalid(ApiError):
    status = 422


class QueueFull(ApiError):
    """429: the queue (or this station's share) stayed full for ``wait_for_room`` seconds, or the
    station's request rate was over its limit for as long."""

    status = 429

    @property
    def retry_after(self) -> float:
        return _retry_after(self.response)


class Unavailable(ApiError):
    status = 503


class EditTimeout(ApiError):
    status = 504


class ConnectionFailed(ApiError):
    """The server could not be reached (after retries)."""


class JobFailed(ApiError):
    """``edit`` / ``wait(raise_on_failure=True)``: the job ended ``failed`` or ``cancelled``."""

    def __init__(self, view: JobStatusResponse):
        super().__init__(f"Job {view.job_id} {view.status}" + (f": {view.error}" if view.error else "."))
        self.view = view


ERRORS: dict[int, type[ApiError]] = {cls.status: cls for cls in
                                     (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, TooLarge, Invalid, QueueFull,
                                      Unavailable, EditTimeout)}


def _retry_after(response: httpx.Response | None, default: float = 1.0) -> float:
    try:
        return max(0.1, float(response.headers["Retry-After"])) if response is not None else default
    except (KeyError, ValueError):
        return default


def _raise_for(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        detail = response.json()["detail"]
        detail = detail if isinstance(detail, str) else json.dumps(detail)
    except (ValueError, KeyError, TypeError):
        detail = response.text[:300] or response.reason_phrase
    raise ERRORS.get(response.status_code, ApiError)(detail, response.status_code, response)


ImageInput = str | os.PathLike | bytes


def _read(image: ImageInput, i: int) -> tuple[str, bytes, str]:
    if isinstance(image, bytes):
        data, name = image, f"image{i}.png"
    else:
        path = Path(image)
        data, name = path.read_bytes(), path.name
    kind = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
    return name, data, kind


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 4, transport: httpx.BaseTransport | None = None):
        """``url`` defaults to ``$QWEN_EDIT_URL`` or http://127.0.0.1:8000; ``api_key`` to ``$QWEN_API_KEY``."""
        self.url = (url or os.environ.get("QWEN_EDIT_URL") or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("QWEN_API_KEY")
        self.retries = retries
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                 headers={"X-API-Key": key} if key else {})

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ---

    def _request(self, method: str, path: str, wait_for_room: float = 0.0, **kwargs) -> httpx.Response:
        """One call, retried on connection failures and 503 (with backoff) and on 429 (after
        Retry-After, while ``wait_for_room`` lasts). Safe because every call that retries is either
        read-only or carries an Idempotency-Key."""
        deadline = time.monotonic() + wait_for_room
        failures = 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failures += 1
                if failures > self.retries:
                    raise ConnectionFailed(f"Cannot reach {self.url}: {exc}") from exc
                time.sleep(min(0.5 * 2 ** (failures - 1), 8.0))
                continue
            if response.status_code == 503 and failures < self.retries:
                failures += 1
                time.sleep(min(_retry_after(response, 0.5 * 2 ** (failures - 1)), 8.0))
                continue
            if response.status_code == 429 and time.monotonic() + _retry_after(response) <= deadline:
                time.sleep(_retry_after(response))
                continue
            return _raise_for(response)

    # --- the API ---

    def health(self) -> HealthResponse:
        response = self.http.get(f"{API}/health")  # 503 answers carry a body too: the reason
        if response.status_code not in (200, 503):
            _raise_for(response)
        return HealthResponse.model_validate(response.json())

    def models(self) -> ModelsResponse:
        return ModelsResponse.model_validate(self._request("GET", f"{API}/models").json())

    def queue(self) -> QueueResponse:
        return QueueResponse.model_validate(self._request("GET", f"{API}/queue").json())

    def jobs(self, limit: int = 20) -> list[JobStatusResponse]:
        """This station's recent jobs, newest first (every station's with an admin key)."""
        body = self._request("GET", f"{API}/jobs", params={"limit": limit}).json()
        return JobListResponse.model_validate(body).jobs

    def submit(self, images: ImageInput | Iterable[ImageInput], instruction: str, *, preset: str | None = None,
               seed: int | None = None, system_prompt: str | None = None, webhook_url: str | None = None,
               webhook_events: Iterable[str] | None = None, priority: str | None = None,
               start_within_seconds: float | None = None, deadline_seconds: float | None = None,
               previews: bool = False, idempotency_key: str | None = None,
               wait_for_room: float = 300.0) -> SubmitResponse:
        """Queue a job (1 to 3 images: paths or bytes). While the queue is full, retries after
        Retry-After for up to ``wait_for_room`` seconds (0: raise ``QueueFull`` at once).
        ``priority``: low, normal or high, at most the key's; ``start_within_seconds`` and
        ``deadline_seconds``: the job is cancelled if it has not started, or finished, by then.
        ``previews``: a live preview after each step (``wait(on_preview=...)``, ``preview``)."""
        if isinstance(images, (str, bytes, os.PathLike)):
            images = [images]
        files = [("image", _read(image, i)) for i, image in enumerate(images)]
        data = {"instruction": instruction}
        events = ",".join(webhook_events) if webhook_events is not None else None
        if previews:
            data["previews"] = "true"
        for name, value in (("preset", preset), ("seed", seed), ("system_prompt", system_prompt),
                            ("webhook_url", webhook_url), ("webhook_events", events), ("priority", priority),
                            ("start_within_seconds", start_within_seconds), ("deadline_seconds", deadline_seconds)):
            if value is not None:
                data[name] = str(value)
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        response = self._request("POST", f"{API}/submit", wait_for_room, files=files, data=data, headers=headers)
        return SubmitResponse.model_validate(response.json())

    def status(self, job_id: str) -> JobStatusResponse:
        return JobStatusResponse.model_validate(self._request("GET", f"{API}/status/{job_id}").json())

    def cancel(self, job_id: str) -> JobStatusResponse:
        return JobStatusResponse.model_validate(self._request("DELETE", f"{API}/status/{job_id}").json())

    def preview(self, job_id: str) -> tuple[int, bytes]:
        """(step, JPEG) of a running job's latest live preview (it was submitted with previews=True);
        ``NotFound`` with the reason when there is none (yet, or any more)."""
        response = self._request("GET", f"{API}/status/{job_id}/preview")
        return int(response.headers.get("X-Step", 0)), response.content

    def download(self, job_id: str, path: str | os.PathLike | None = None) -> bytes:
        """The result PNG's bytes (also written to ``path`` when given)."""
        data = self._request("GET", f"{API}/status/{job_id}/result").content
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def wait(self, job_id: str, timeout: float | None = None,
             on_update: Callable[[JobStatusResponse], None] | None = None, poll: float = 1.0,
             raise_on_failure: bool = False,
             on_preview: Callable[[int, bytes], None] | None = None) -> JobStatusResponse:
        """Block until the job ends (or ``timeout`` seconds pass: ``EditTimeout``); ``on_update`` gets
        every state, position and progress change, ``on_preview`` (step, JPEG bytes) each live
        preview of a job submitted with ``previews=True``. Follows the events stream, and polls every
        ``poll`` seconds when the stream is unavailable or drops (previews come with the stream only)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        view = None
        try:
            view = self._follow(job_id, deadline, on_update, on_preview)
        except (httpx.TransportError, httpx.HTTPStatusError, _StreamEnded):
            pass
        while view is None or view.status not in TERMINAL:
            if deadline is not None and time.monotonic() >= deadline:
                raise EditTimeout(f"Job {job_id} did not finish within {timeout:g}s.")
            new = self.status(job_id)
            if on_update is not None and (view is None or new != view):
                on_update(new)
            view = new
            if view.status not in TERMINAL:
                time.sleep(poll)
        if raise_on_failure and view.status is not JobStatus.COMPLETED:
            raise JobFailed(view)
        return view

    def _follow(self, job_id: str, deadline: float | None, on_update, on_preview=None) -> JobStatusResponse:
        timeout = httpx.Timeout(30.0, read=30.0)  # the server sends a heartbeat at least every 10 s
        with connect_sse(self.http, "GET", f"{API}/status/{job_id}/events", timeout=timeout) as source:
            if source.response.status_code != 200:
                source.response.read()
                _raise_for(source.response)
            for event in source.iter_sse():
                if event.event == "error":
                    raise _StreamEnded()
                if event.event == "preview":
                    if on_preview is not None:
                        data = json.loads(event.data)
                        on_preview(data["step"], base64.b64decode(data["image"].split(",", 1)[1]))
                    continue
                view = JobStatusResponse.model_validate_json(event.data)
                if on_update is not None:
                    on_update(view)
                if view.status in TERMINAL:
                    return view
                if deadline is not None and time.monotonic() >= deadline:
                    raise EditTimeout(f"Job {job_id} did not finish in time.")
        raise _StreamEnded()

    def edit(self, images: ImageInput | Iterable[ImageInput], instruction: str, out: str | os.PathLike | None = None,
             timeout: float | None = None, on_update=None, **submit_args) -> bytes:
        """Submit, wait, download: the result PNG's bytes; ``JobFailed`` if the job fails."""
        job = self.submit(images, instruction, **submit_args)
        self.wait(job.job_id, timeout=timeout, on_update=on_update, raise_on_failure=True)
        return self.download(job.job_id, out)


class _StreamEnded(Exception):
    """The events stream closed or reported an error before the job ended: fall back to polling."""
