"""The messages between the ingress, the queue and the model workers, typed once.

Both sides of each call import this module, never each other: the ingress sends a ``JobRequest``;
the queue hands a worker a ``JobTask`` or a ``LoadTask``; the worker reports ``StepReport``,
``JobDone``, ``JobFailed`` and ``LoadDone``, and the queue answers each outcome with an ``Outcome``.
Frozen dataclasses: they cross Ray by pickling, and nobody changes them on the way. No Ray, no torch.
"""

from dataclasses import dataclass
from enum import Enum

from .presets import Preset

# Workers heartbeat this often, busy or idle (the queue's registry judges them by it).
HEARTBEAT_S = 2.0


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


@dataclass(frozen=True)
class JobTask:
    """A job for a worker to run."""

    job_id: str
    preset: Preset
    images: list[bytes]
    instruction: str
    seed: int
    system_prompt: str | None


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
class JobDone:
    job_id: str
    png: bytes
    run_seconds: float


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
