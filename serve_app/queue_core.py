"""The job queue's rules, in plain Python: no Ray, no I/O, no clock of its own.

Guarantees (each checked by tests/unit/test_queue_core.py):
- Admission: at most ``max_size`` jobs are *queued or processing* at once; the check and the insert
  happen in one synchronous call, so concurrent submits through one event loop can never overshoot.
- FIFO: workers are handed queued jobs strictly in submission order.
- ``position`` is live: 1-based among queued jobs, recomputed on every read, ``None`` once a job left
  the queue.
- ETAs come from measured processing times per preset (an exponential moving average seeded with the
  preset's nominal time) and count the remaining time of running jobs, over all worker slots.
- TTL: a finished job is removed ``cleanup_age_s`` after it finished; ``expire()`` returns the removed
  jobs so the caller can delete their files. The input payload is dropped as soon as a job finishes.
- Counters of completed and failed jobs include jobs that were cleaned up since.
"""

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .errors import JobNotFound, QueueFull

EMA_WEIGHT = 0.3  # weight of the newest measurement in a preset's running average


class JobStatus(str, Enum):
    QUEUED = "queued"  # accepted, waiting for a worker; counts against the cap
    PROCESSING = "processing"  # a worker is running it; counts against the cap
    COMPLETED = "completed"  # terminal: the result file exists until the job expires
    FAILED = "failed"  # terminal: ``error`` says why

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


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


class JobQueue:
    def __init__(
        self,
        max_size: int,
        cleanup_age_s: float,
        nominal_seconds: Mapping[str, float],
        clock: Callable[[], float] = time.time,
    ):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self.cleanup_age_s = cleanup_age_s
        self._clock = clock
        self._avg: dict[str, float] = dict(nominal_seconds)
        self._jobs: dict[str, Job] = {}
        self._queued: deque[str] = deque()
        self._running: dict[str, Job] = {}  # insertion order = start order
        self.worker_slots = 1
        self.completed_total = 0
        self.failed_total = 0
        self.refused_total = 0

    # --- admission and lifecycle -------------------------------------------------------------

    @property
    def occupancy(self) -> int:
        return len(self._queued) + len(self._running)

    def check_room(self) -> None:
        """Raise ``QueueFull`` (with the seconds until a slot should free up) when full."""
        if self.occupancy >= self.max_size:
            self.refused_total += 1
            raise QueueFull(self.max_size, self.retry_after())

    def submit(self, job_id: str, *, instruction: str, preset: str, seed: int,
               system_prompt: str | None = None, payload: Any = None) -> Job:
        """Admit a job or raise ``QueueFull``; the check and the insert are one step."""
        self.check_room()
        if job_id in self._jobs:
            raise ValueError(f"duplicate job id {job_id}")
        job = Job(id=job_id, instruction=instruction, preset=preset, seed=seed,
                  system_prompt=system_prompt, created_at=self._clock(), payload=payload)
        self._jobs[job_id] = job
        self._queued.append(job_id)
        return job

    def claim(self, worker_id: str) -> Job | None:
        """Hand the oldest queued job to a worker (it becomes ``processing``), or None if none waits."""
        if not self._queued:
            return None
        job = self._jobs[self._queued.popleft()]
        job.status = JobStatus.PROCESSING
        job.started_at = self._clock()
        job.worker_id = worker_id
        self._running[job.id] = job
        return job

    def complete(self, job_id: str, result_name: str, run_seconds: float | None = None) -> Job:
        job = self._finish(job_id, JobStatus.COMPLETED, run_seconds)
        job.result_name = result_name
        self.completed_total += 1
        return job

    def fail(self, job_id: str, error: str, run_seconds: float | None = None) -> Job:
        job = self._finish(job_id, JobStatus.FAILED, run_seconds, measure=False)
        job.error = error
        self.failed_total += 1
        return job

    def _finish(self, job_id: str, status: JobStatus, run_seconds: float | None, measure: bool = True) -> Job:
        job = self._running.pop(job_id, None)
        if job is None:
            raise KeyError(f"job {job_id} is not processing")
        now = self._clock()
        job.status = status
        job.completed_at = now
        job.payload = None
        if measure:
            took = run_seconds if run_seconds is not None else now - (job.started_at or now)
            old = self._avg.get(job.preset, took)
            self._avg[job.preset] = old + EMA_WEIGHT * (took - old)
        return job

    def expire(self) -> list[Job]:
        """Remove finished jobs older than the cleanup age; returns them (their files are the caller's)."""
        cutoff = self._clock() - self.cleanup_age_s
        gone = [j for j in self._jobs.values()
                if j.status.terminal and j.completed_at is not None and j.completed_at <= cutoff]
        for job in gone:
            del self._jobs[job.id]
        return gone

    # --- reads ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id, self.cleanup_age_s)
        return job

    def position(self, job: Job) -> int | None:
        if job.status is not JobStatus.QUEUED:
            return None
        return self._queued.index(job.id) + 1

    def average_seconds(self, preset: str) -> float:
        return self._avg.get(preset, 1.0)

    def _slot_free_times(self) -> list[float]:
        """Seconds from now until each worker slot is free, as a heap."""
        now = self._clock()
        frees = [max(self.average_seconds(j.preset) - (now - (j.started_at or now)), 0.0)
                 for j in self._running.values()]
        frees += [0.0] * max(self.worker_slots - len(frees), 0)
        if not frees:
            frees = [0.0]
        heapq.heapify(frees)
        return frees

    def estimated_start(self, job: Job) -> float:
        """Seconds until ``job`` should start: 0 when it runs already."""
        if job.status is not JobStatus.QUEUED:
            return 0.0
        frees = self._slot_free_times()
        for ahead in list(self._queued)[: self.position(job) - 1]:
            heapq.heapreplace(frees, frees[0] + self.average_seconds(self._jobs[ahead].preset))
        return frees[0]

    def estimated_wait(self, job: Job) -> int:
        """Whole seconds until ``job``'s result should be ready (queue wait plus its own run time)."""
        if job.status.terminal:
            return 0
        remaining = self.average_seconds(job.preset)
        if job.status is JobStatus.PROCESSING:
            remaining -= self._clock() - (job.started_at or self._clock())
        return math.ceil(self.estimated_start(job) + max(remaining, 0.0))

    def retry_after(self) -> int:
        """Whole seconds until a place in the queue should free up (at least 1)."""
        if self._running:
            soonest = min(self._slot_free_times())
        elif self._queued:
            soonest = self.average_seconds(self._jobs[self._queued[0]].preset)
        else:
            soonest = 0.0
        return max(1, math.ceil(soonest))

    def running(self) -> list[Job]:
        return list(self._running.values())

    def stats(self) -> dict:
        running = list(self._running)
        return {
            "queue_size": self.occupancy,
            "max_queue_size": self.max_size,
            "queued_count": len(self._queued),
            "processing_count": len(running),
            "completed_count": self.completed_total,
            "failed_count": self.failed_total,
            "current_job_id": running[0] if running else None,
            "total_jobs": len(self._jobs),
            "running_job_ids": running,
            "refused_count": self.refused_total,
        }

    def view(self, job: Job) -> dict:
        """The contract's status object for one job."""
        return {
            "job_id": job.id,
            "status": job.status.value,
            "position": self.position(job),
            "created_at": iso(job.created_at),
            "started_at": iso(job.started_at),
            "completed_at": iso(job.completed_at),
            "result_path": job.result_name,
            "result_seed": job.seed if job.status is JobStatus.COMPLETED else None,
            "error": job.error,
            "instruction": job.instruction,
            "model": job.preset,
            "estimated_wait_seconds": None if job.status.terminal else self.estimated_wait(job),
            "worker": job.worker_id[-8:] if job.worker_id else None,
        }
