"""One job as the queue holds it (``Job``), and the time format the stations parse (``iso``)."""

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..contract.protocol import JobStatus

DEFAULT_STATION = "default"


def iso(ts: float | None) -> str | None:
    """ISO 8601, UTC, seconds precision, no offset: the format stations already parse."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    instruction: str
    preset: str
    seed: int
    system_prompt: str | None
    created_at: float
    status: JobStatus = JobStatus.QUEUED
    started_at: float | None = None
    completed_at: float | None = None
    result_name: str | None = None
    error: str | None = None
    worker_id: str | None = None
    payload: Any = field(default=None, repr=False)  # the input image bytes, until the job finishes
    pixels: Any = field(default=None, repr=False)  # the decoded inputs' reference (in memory only), until then
    station: str = DEFAULT_STATION
    idempotency_key: str | None = None
    fingerprint: str | None = None  # of the request that created the job (idempotent retries)
    webhook_url: str | None = None
    webhook_events: str | None = None  # comma-separated WEBHOOK_EVENTS; None: the final ones
    step: int = 0
    total_steps: int | None = None
    step_seconds: float | None = None  # measured on this job, from the pipeline's step callback
    run_seconds: float | None = None  # the worker's time on it, from generation start to result
    full_steps: int | None = None  # steps its transformer ran in full (a preset's step cache skips some)
    attempts: int = 0  # times a worker started it (a job interrupted by a crash runs again once)
    start_by: float | None = None  # not started by then: cancelled (start_within_seconds)
    finish_by: float | None = None  # not finished by then: cancelled (deadline_seconds)
    priority: str = "normal"
    passes: int = 0  # jobs of higher priority that started before it while it waited (in memory only)
    previews: bool = False  # the station asked for live previews
    preview_step: int | None = None  # the latest preview's step (kept in memory only, as the preview)
    changed: int = 0  # the queue's version at this job's latest change (in memory only: the change feed)
