"""The messages between the ingress, the queue and the model workers, typed once.

Both sides of each call import this module, never each other: the ingress sends a ``JobRequest``
and gets ``JobView``s back; the queue hands a worker a ``JobTask`` or a ``LoadTask``; the worker
reports ``StepReport``, ``JobDone``, ``JobFailed`` and ``LoadDone``, and the queue answers each
outcome with an ``Outcome``. ``JobStatus`` and ``TERMINAL`` are the one place that names the job
states. Frozen dataclasses: they cross Ray by pickling, and nobody changes them on the way. No Ray,
no torch.
"""

import dataclasses
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from ..presets import Preset

# Workers heartbeat this often, busy or idle (the queue's registry judges them by it), or more often
# under a short lease (``heartbeat_every``).
HEARTBEAT_S = 2.0


def heartbeat_every(lease_s: float) -> float:
    """How often a worker heartbeats under a job lease of ``lease_s``: at least three times per lease,
    so one late heartbeat (a busy event loop, a slow call) does not let the lease of a job that is
    making progress run out. Never less often than ``HEARTBEAT_S``, which liveness is judged by."""
    return min(HEARTBEAT_S, lease_s / 3)


class JobStatus(StrEnum):
    """A job's state, as stations see it (the value is the contract's string)."""

    QUEUED = "queued"  # accepted, waiting for a worker; counts against the cap
    PROCESSING = "processing"  # a worker is running it; counts against the cap
    COMPLETED = "completed"  # final: the result file exists until the job expires
    FAILED = "failed"  # final: ``error`` says why
    CANCELLED = "cancelled"  # final: taken back by its station; it never ran, or stopped early

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


# The states a job never leaves (until it is cleaned up): the only definition in the project.
TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class JobView:
    """The contract's status object for one job, as the queue answers it (``GET /status`` is this,
    as JSON). Made only by ``JobQueue.view``."""

    job_id: str
    status: JobStatus
    position: int | None  # 1-based among queued jobs, live; None unless queued
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    result_path: str | None  # the result file's name
    result_seed: int | None
    error: str | None
    instruction: str
    model: str  # the preset
    estimated_wait_seconds: int | None
    worker: str | None
    progress: float
    step: int
    total_steps: int | None
    eta_seconds: float | None
    station: str | None
    run_seconds: float | None
    attempts: int
    priority: str
    preview_step: int | None  # the step of the latest live preview (jobs that asked for previews)
    full_steps: int | None = None  # of a completed job: steps its transformer ran in full (a step cache skips some)
    message: str | None = None  # why a queued job waits, when it is not the jobs ahead (a worker starting)
    # The queue's version when this view was made (``JobQueue.changes``): which of two views of a job
    # is newer. Not part of the status object stations see.
    version: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def status_signature(self) -> tuple:
        """What a status event tells (ETAs, which tick with time, are left out): two views with the
        same status signature are the same status news."""
        return (self.status.value, self.position, self.step, self.total_steps, self.error, self.result_path,
                self.worker, self.message)

    def signature(self) -> tuple:
        """What a station following the job is told about when it changes: its status, and a new
        live preview. Two views with the same signature are the same news."""
        return (*self.status_signature(), self.preview_step)

    def as_dict(self) -> dict:
        """JSON-ready, as stations see it: the status as its string, no ``version``."""
        out = dataclasses.asdict(self)
        del out["version"]
        return {**out, "status": self.status.value}


@dataclass(frozen=True)
class Changes:
    """The queue's change feed, as the ingress replicas' mirrors get it (``QueueActor.changes``)."""

    epoch: str  # the queue replica that answered; a new one starts its versions anew
    version: int  # everything below is as of this version of that replica
    full: bool  # views holds every job: the mirror replaces what it held
    views: list[JobView]  # every unfinished job, and the finished ones that changed since the asked version
    removed: list[str]  # jobs removed since then (expired)
    stats: dict  # ``GET /queue``'s body
    health: dict  # what ``/health`` is made from


class WorkerState(str, Enum):
    """What a model worker is doing, as the queue and /health see it."""

    STARTING = "starting"  # the replica is up, its profile not chosen yet
    LOADING = "loading"  # loading or switching a preset
    IDLE = "idle"  # up, no preset loaded yet
    READY = "ready"  # a preset loaded, waiting for a job
    BUSY = "busy"  # running a job (or finishing one while the next starts)
    FAILED = "failed"  # its last load failed; it still takes jobs
    UNUSABLE = "unusable"  # its device cannot run its profile: takes nothing (detail says why)

    def __str__(self) -> str:
        return self.value


class Outcome(str, Enum):
    """The queue's answer to a job's outcome report. Any answer means the report arrived."""

    COMPLETED = "completed"
    FAILED = "failed"  # the job failed (as reported, or its result could not be stored)
    NOT_YOURS = "not yours"  # the job is no longer this worker's (cancelled, or run elsewhere)


# What a job's webhook can be called for: it starts, or it ends in one of the final states.
WEBHOOK_EVENTS = ("started", "completed", "failed", "cancelled")
DEFAULT_WEBHOOK_EVENTS = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class JobRequest:
    """A station's checked submit, as the ingress sends it to the queue."""

    job_id: str
    images: list[bytes]
    instruction: str
    seed: int
    preset: str | None
    system_prompt: str | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS
    start_within_seconds: float | None = None  # not started by then: cancelled (refused if already later)
    deadline_seconds: float | None = None  # not finished by then: cancelled
    priority: str = "normal"  # one of auth.PRIORITIES, at most the caller's
    previews: bool = False  # live previews after each step
    pixels: Any = None  # the decoded images (``transfer.share``: a reference into Ray's object store)


@dataclass(frozen=True)
class JobTask:
    """A job for a worker to run: its images as the ingress decoded them (``pixels``, a reference
    into Ray's object store), or as uploaded (``images``: bytes, to decode) when there are no pixels
    (a job restored from the database). A worker that cannot fetch the pixels asks the queue for the
    bytes (``QueueActor.inputs``)."""

    job_id: str
    preset: Preset
    images: list[bytes] | None
    instruction: str
    seed: int
    system_prompt: str | None
    previews: bool = False
    pixels: Any = None


@dataclass(frozen=True)
class LoadTask:
    """A preset for a worker to load (``/api/v1/load-model``)."""

    preset: Preset


@dataclass(frozen=True)
class StepReport:
    job_id: str
    step: int
    total: int
    step_seconds: float | None  # None for the first step (it includes the encoders)


@dataclass(frozen=True)
class PreviewReport:
    job_id: str
    step: int
    jpeg: bytes  # at most 256 px on the long side


@dataclass(frozen=True)
class JobDone:
    job_id: str
    png: bytes
    run_seconds: float
    full_steps: int | None = None  # steps the transformer ran in full (fewer than the preset's with a step cache)


@dataclass(frozen=True)
class JobFailed:
    job_id: str
    error: str  # one line, no server paths
    run_seconds: float


@dataclass(frozen=True)
class LoadDone:
    preset: str
    seconds: float | None
    error: str | None
