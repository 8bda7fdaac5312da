"""How long things should take, from measured processing times: no state of the queue's own beyond the
averages, no clock of its own.

Each preset's time is an exponential moving average of its jobs' measured run times, seeded with the
preset's nominal time. A running job's remaining time comes from its measured steps once it has
them. A queued job starts when a worker slot frees up for it: the slots free as the running jobs
finish, and each job ahead of it (in start order) holds one for its preset's average.
"""

import heapq
import math
from collections.abc import Callable, Iterable, Mapping

from ..contract.protocol import JobStatus
from .job import Job

EMA_WEIGHT = 0.3  # weight of the newest measurement in a preset's running average


class Estimates:
    def __init__(self, nominal_seconds: Mapping[str, float], clock: Callable[[], float]):
        self._avg: dict[str, float] = dict(nominal_seconds)
        self._clock = clock

    def average(self, preset: str) -> float:
        return self._avg.get(preset, 1.0)

    def measured(self, preset: str, took: float) -> None:
        """A job of ``preset`` ran ``took`` seconds."""
        old = self._avg.get(preset, took)
        self._avg[preset] = old + EMA_WEIGHT * (took - old)

    def remaining(self, job: Job) -> float:
        """Seconds a running job still needs: from its measured steps once it has them."""
        if job.step_seconds and job.total_steps:
            return (job.total_steps - job.step) * job.step_seconds
        now = self._clock()
        return max(self.average(job.preset) - (now - (job.started_at or now)), 0.0)

    def slot_free_times(self, running: Iterable[Job], slots: int, not_before: float = 0.0) -> list[float]:
        """Seconds from now until each of ``slots`` worker slots is free, as a heap; none before
        ``not_before`` (no worker yet: the seconds until one should have started)."""
        frees = [self.remaining(j) for j in running]
        frees += [0.0] * max(slots - len(frees), 0)
        if not frees:
            frees = [0.0]
        frees = [max(f, not_before) for f in frees]
        heapq.heapify(frees)
        return frees

    def start_after(self, ahead: Iterable[Job], running: Iterable[Job], slots: int, not_before: float = 0.0) -> float:
        """Seconds until a queued job starts, with ``ahead`` (in start order) before it."""
        frees = self.slot_free_times(running, slots, not_before)
        for job in ahead:
            heapq.heapreplace(frees, frees[0] + self.average(job.preset))
        return frees[0]

    def starts(self, queued: Iterable[Job], running: Iterable[Job], slots: int,
               not_before: float = 0.0) -> dict[str, float]:
        """Each queued job's start (``queued`` in start order), in one pass."""
        frees, starts = self.slot_free_times(running, slots, not_before), {}
        for job in queued:
            starts[job.id] = frees[0]
            heapq.heapreplace(frees, frees[0] + self.average(job.preset))
        return starts

    def wait(self, job: Job, start: float) -> int:
        """Whole seconds until an unfinished job's result should be ready; ``start``: when a queued
        one starts (ignored for a running one)."""
        if job.status is JobStatus.PROCESSING:
            return math.ceil(self.remaining(job))
        return math.ceil(start + self.average(job.preset))

    def eta(self, job: Job, start: float) -> float:
        """Seconds until an unfinished job's result: running, its remaining steps times its measured
        step time (the preset's average until a step was measured); queued, start plus run time."""
        if job.status is JobStatus.PROCESSING:
            return round(self.remaining(job), 1)
        return float(self.wait(job, start))

    def retry_after(self, running: list[Job], first_queued: Job | None, slots: int) -> int:
        """Whole seconds until a place in the queue should free up (at least 1)."""
        if running:
            soonest = min(self.slot_free_times(running, slots))
        elif first_queued is not None:
            soonest = self.average(first_queued.preset)
        else:
            soonest = 0.0
        return max(1, math.ceil(soonest))
