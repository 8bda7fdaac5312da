"""One error family for the whole service, mapped to HTTP once, at the ingress.

Every error a station can see is an ``ApiError``: it carries the HTTP status, the human sentence that
goes into ``{"detail": ...}`` and any headers. Deep code (queue core, image checks, preset registry)
raises these; the ingress turns them into responses. Anything else that escapes is a bug: it is
logged and answered with a bare 500 that reveals nothing.

The classes are plain picklable exceptions so that they cross Ray actor boundaries intact.
"""

import math

CLEANUP_HINT = "It may have been cleaned up (jobs are kept for {age} after completion)."


def _age_words(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "1 hour" if hours == 1 else f"{hours} hours"
    if seconds % 60 == 0:
        minutes = seconds // 60
        return "1 minute" if minutes == 1 else f"{minutes} minutes"
    return f"{seconds} seconds"


class ApiError(Exception):
    status_code = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}

    def __reduce__(self):  # keep detail and headers when pickled across Ray
        return (self.__class__._rebuild, (self.__class__, self.detail, self.headers))

    @staticmethod
    def _rebuild(cls, detail, headers):
        err = Exception.__new__(cls)
        ApiError.__init__(err, detail, headers)
        return err


class BadRequest(ApiError):
    """Input a station can fix (image, instruction, seed, preset)."""

    status_code = 400


class InvalidImage(BadRequest):
    pass


class NoModelLoaded(BadRequest):
    def __init__(self):
        super().__init__("No model loaded. Please call /api/v1/load-model first to load a model.")


class PresetUnavailable(BadRequest):
    """A known preset whose weights are not on this server; the detail says what to provide."""


class Unauthorized(ApiError):
    status_code = 401

    def __init__(self):
        super().__init__("Invalid or missing API key", {"WWW-Authenticate": "X-API-Key"})


class Forbidden(ApiError):
    """The key is valid but may not do this (e.g. ask for a higher priority than it carries)."""

    status_code = 403


class JobNotFound(ApiError):
    status_code = 404

    def __init__(self, job_id: str, cleanup_age_s: float):
        shown = job_id if len(job_id) <= 80 else job_id[:80] + "..."
        super().__init__(f"Job {shown} not found. " + CLEANUP_HINT.format(age=_age_words(cleanup_age_s)))


class ResultNotReady(ApiError):
    status_code = 404


class PreviewNotReady(ApiError):
    status_code = 404


class LoadInProgress(ApiError):
    status_code = 409


class Conflict(ApiError):
    """The request contradicts the job's state (e.g. cancelling a finished job)."""

    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class Unprocessable(ApiError):
    status_code = 422


class QueueFull(ApiError):
    status_code = 429

    def __init__(self, max_size: int, retry_after_s: int):
        super().__init__(
            f"Queue is full (maximum {max_size} jobs). Please try again later.",
            {"Retry-After": str(max(1, int(retry_after_s)))},
        )


class StartTooLate(ApiError):
    status_code = 429

    def __init__(self, estimated_start_s: float, start_within_s: float):
        wait = max(1, int(estimated_start_s - start_within_s + 0.999))
        super().__init__(
            f"This job would start in about {estimated_start_s:.0f}s, later than its start_within_seconds "
            f"({start_within_s:g}s). Retry in {wait}s, or allow a later start.",
            {"Retry-After": str(wait)},
        )


class StationLimit(ApiError):
    status_code = 429

    def __init__(self, station: str, limit: int, retry_after_s: int):
        super().__init__(
            f"Station {station} already has {limit} jobs queued or running, its own limit on this server "
            f"(the shared queue may still have room). Wait for one of them to finish.",
            {"Retry-After": str(max(1, int(retry_after_s)))},
        )


class RateLimited(ApiError):
    status_code = 429

    def __init__(self, station: str, rate: float, burst: float, wait_s: float):
        wait = max(1, math.ceil(wait_s))
        super().__init__(
            f"Too many requests from station {station}: at most {rate:g} per second on average (bursts of "
            f"{burst:g}). Retry in {wait}s; poll less often, or follow /api/v1/status/{{job_id}}/events instead.",
            {"Retry-After": str(wait)},
        )


class ServiceUnavailable(ApiError):
    status_code = 503


class EditTimeout(ApiError):
    status_code = 504


def api_error_of(exc: BaseException) -> ApiError | None:
    """The ApiError behind an exception that crossed a Ray call (Ray wraps it; ``cause`` is the
    original), if that is what it is."""
    if isinstance(exc, ApiError):
        return exc
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, ApiError) else None
