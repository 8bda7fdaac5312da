"""The job queue's rules, in plain Python: no Ray, no I/O, no clock of its own.

Guarantees (each checked by tests/unit/queue/test_core.py):
- Admission: at most ``max_size`` jobs are *queued or processing* at once; the check and the insert
  happen in one synchronous call, so concurrent submits through one event loop can never overshoot.
- Order: ``fifo`` (the contract) hands queued jobs to workers strictly in submission order; ``fair``
  takes stations in turn (round-robin over the stations that have queued jobs: the station served
  longest ago goes next, a station never served first; FIFO within each station).
- Priorities (``high``, ``normal``, ``low``): a higher-priority job starts before every lower one
  that waits; the scheduling policy orders jobs of one priority. A waiting job is passed (a job of
  higher priority submitted after it starts first) at most ``max_passes`` times: then it starts next.
- ``position`` is live: 1-based in the order jobs will start (the starvation bound included),
  recomputed after every change, ``None`` once a job left the queue. A job's position can grow when
  a higher-priority job arrives.
- Preset affinity: of the jobs about to start, each goes to an idle worker that already holds its
  preset when there is one (``claim`` with the idle workers); which jobs start next stays the order
  above.
- A station never has more than ``max_per_station`` jobs queued or processing (when set).
- Cancel: a queued job never runs; a processing job is finished as ``cancelled`` at once (its worker
  stops at the next step); a finished job cannot be cancelled; cancelling twice is harmless.
- Idempotency: one (station, key) names one job while that job exists; the same key with another
  request is refused, never silently mapped to the first job.
- ETAs come from measured processing times per preset (an exponential moving average seeded with the
  preset's nominal time) and count the remaining time of running jobs, over all worker slots.
- TTL: a finished job is removed ``cleanup_age_s`` after it finished; ``expire()`` returns the removed
  jobs so the caller can delete their files. The input payload is dropped as soon as a job finishes.
- Counters of completed and failed jobs include jobs that were cleaned up since.
- Change feed: ``version`` grows with every change of a job or of the counters; ``changes(since)``
  returns every unfinished job's view, the finished jobs changed after ``since`` and the ids removed
  after it, so a reader that applies each answer holds every job's current view (``full`` when
  ``since`` is too old to answer as a delta). Each view carries the version it was made at.
"""

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..auth import PRIORITIES
from ..contract.protocol import JobStatus, JobView
from ..errors import Conflict, JobNotFound, QueueFull, StartTooLate, StationLimit, Unprocessable
from .estimates import Estimates
from .feed import ChangeFeed
from .job import DEFAULT_STATION, Job
from .start_order import RANK, start_order
from .views import job_view

SCHEDULING = ("fifo", "fair")
RECENT_PRESETS = 20  # preset affinity: which presets were asked for lately


@dataclass(frozen=True)
class Delta:
    """``JobQueue.changes``: what changed after a version."""

    version: int
    full: bool  # views holds every job: the reader replaces what it held
    views: list[JobView]  # every unfinished job, and the finished ones changed after ``since``
    removed: list[str]  # jobs removed after ``since`` (expired, or a submit that could not be stored)


class JobQueue:
    def __init__(
        self,
        max_size: int,
        cleanup_age_s: float,
        nominal_seconds: Mapping[str, float],
        clock: Callable[[], float] = time.time,
        scheduling: str = "fifo",
        max_per_station: int | None = None,
        max_passes: int = 3,
    ):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if scheduling not in SCHEDULING:
            raise ValueError(f"scheduling must be one of {SCHEDULING}")
        self.max_size = max_size
        self.cleanup_age_s = cleanup_age_s
        self.scheduling = scheduling
        self.max_per_station = max_per_station
        self.max_passes = max_passes
        self._clock = clock
        self.estimates = Estimates(nominal_seconds, clock)
        self._jobs: dict[str, Job] = {}
        self._queued: deque[str] = deque()  # submission order
        self._served: dict[str, int] = {}  # fair: station -> tick of its last job handed out
        self._tick = 0
        self._order: list[str] | None = None  # cached start order of the queued jobs
        self._positions: dict[str, int] = {}
        self._running: dict[str, Job] = {}  # insertion order = start order
        self._keys: dict[tuple[str, str], str] = {}  # (station, idempotency key) -> job id
        self._tickets: dict[str, int] = {}  # job id -> submission number (requeue keeps that order)
        self._next_ticket = 0
        self._recent: deque[str] = deque(maxlen=RECENT_PRESETS)  # presets of the latest submits
        self._worker_slots = 1
        # When the first worker should be ready (this clock), while none is up and one is starting
        # (autoscaling from zero): queued jobs' ETAs count from then, and their status says why.
        self._worker_expected_at: float | None = None
        self.feed = ChangeFeed()
        # Finished jobs in the order they finished, (time, id): expiry walks only the expired ones.
        self._expiring: deque[tuple[float, str]] = deque()
        self.completed_total = 0
        self.failed_total = 0
        self.cancelled_total = 0
        self.refused_total = 0

    # --- the change feed (``feed``) ------------------------------------------------------------

    @property
    def version(self) -> int:
        """Grows with every change of a job or of the counters."""
        return self.feed.version

    def _bump(self, *jobs: Job) -> None:
        self.feed.bump(*jobs)

    def _ended_now(self, job: Job) -> None:
        """``job`` just reached a final state (and was bumped)."""
        self.feed.ended(job)
        if job.completed_at is not None:
            self._expiring.append((job.completed_at, job.id))

    def touch(self) -> int:
        """Count a change the queue's owner made outside the jobs (one a change-feed reader must
        see, such as the default preset); returns the new version."""
        self._bump()
        return self.version

    def changes(self, since: int | None) -> Delta:
        """What changed after version ``since`` (None: everything). Unfinished jobs are always
        included whole (positions and ETAs move with every change)."""
        views = self.active_views()
        if self.feed.full(since):
            views += [self.view(job) for job in self._jobs.values() if job.status.terminal]
            return Delta(self.version, True, views, [])
        ended, removed = self.feed.since(since)
        for version, job_id in ended:
            job = self._jobs.get(job_id)
            if job is not None and job.changed == version:  # (not requeued or removed since)
                views.append(self.view(job))
        return Delta(self.version, False, views, removed)

    @property
    def worker_slots(self) -> int:
        return self._worker_slots

    @worker_slots.setter
    def worker_slots(self, n: int) -> None:
        if n != self._worker_slots:  # ETAs change with it
            self._worker_slots = n
            self._bump()

    # --- admission and lifecycle -------------------------------------------------------------

    @property
    def occupancy(self) -> int:
        return len(self._queued) + len(self._running)

    def station_occupancy(self, station: str) -> int:
        return (sum(1 for i in self._queued if self._jobs[i].station == station)
                + sum(1 for j in self._running.values() if j.station == station))

    def check_room(self, station: str | None = None) -> None:
        """Raise ``QueueFull`` when the queue is full, or ``StationLimit`` when ``station`` has its
        own maximum of jobs in; both carry the seconds until a slot should free up."""
        if self.occupancy >= self.max_size:
            self.refused_total += 1
            self._bump()
            raise QueueFull(self.max_size, self.retry_after())
        if (station is not None and self.max_per_station is not None
                and self.station_occupancy(station) >= self.max_per_station):
            self.refused_total += 1
            self._bump()
            raise StationLimit(station, self.max_per_station, self.retry_after())

    def find_idempotent(self, station: str, key: str | None, fingerprint: str | None) -> Job | None:
        """The job an earlier request with this key created, if it still exists; ``Unprocessable``
        when that request was a different one."""
        if key is None:
            return None
        job_id = self._keys.get((station, key))
        if job_id is None:
            return None
        job = self._jobs[job_id]
        if job.fingerprint != fingerprint:
            raise Unprocessable(
                f"Idempotency-Key {key[:64]!r} was already used for a different request (job {job.id}). "
                "Use a new key for a new request, or resend exactly the same request to get that job.")
        return job

    def submit(self, job_id: str, *, instruction: str, preset: str, seed: int,
               system_prompt: str | None = None, payload: Any = None, pixels: Any = None,
               station: str = DEFAULT_STATION,
               idempotency_key: str | None = None, fingerprint: str | None = None,
               webhook_url: str | None = None, webhook_events: str | None = None,
               total_steps: int | None = None, start_within_s: float | None = None,
               deadline_s: float | None = None, priority: str = "normal", previews: bool = False) -> Job:
        """Admit a job, or raise ``QueueFull`` / ``StationLimit``, or ``StartTooLate`` when its
        estimated start is already later than ``start_within_s``; the checks and the insert are one
        step. With an idempotency key already used for the same request, returns that job instead
        (whatever the queue's occupancy): callers tell by the returned job's id. A job not started
        within ``start_within_s``, or not finished within ``deadline_s``, is ended by ``overdue``."""
        earlier = self.find_idempotent(station, idempotency_key, fingerprint)
        if earlier is not None:
            return earlier
        self.check_room(station)
        if job_id in self._jobs:
            raise ValueError(f"duplicate job id {job_id}")
        if priority not in RANK:
            raise ValueError(f"priority must be one of {PRIORITIES}")
        job = Job(id=job_id, instruction=instruction, preset=preset, seed=seed,
                  system_prompt=system_prompt, created_at=self._clock(), payload=payload, pixels=pixels,
                  station=station,
                  idempotency_key=idempotency_key, fingerprint=fingerprint, webhook_url=webhook_url,
                  webhook_events=webhook_events, total_steps=total_steps, priority=priority, previews=previews)
        now = job.created_at
        job.start_by = None if start_within_s is None else now + start_within_s
        job.finish_by = None if deadline_s is None else now + deadline_s
        self._jobs[job_id] = job
        self._ticket(job_id)
        self._queued.append(job_id)
        self._recent.append(preset)
        self._order = None
        if start_within_s is not None:
            start = self.estimated_start(job)
            if start > start_within_s:  # refused: taken out again before anyone saw it
                self._unqueue(job)
                del self._jobs[job_id], self._tickets[job_id]
                self.refused_total += 1
                self._bump()
                raise StartTooLate(start, start_within_s)
        if idempotency_key is not None:
            self._keys[(station, idempotency_key)] = job_id
        self._bump(job)
        return job

    def claim(self, worker_id: str, preset: str | None = None,
              idle: Mapping[str, str | None] | None = None) -> Job | None:
        """Hand a queued job to a worker: it becomes ``processing``.

        ``idle``: every worker now waiting for a job, each with the preset it holds (``worker_id``
        with ``preset`` is added). The next ``len(idle)`` jobs in ``order()`` are matched to them:
        each job, in order, to a waiting worker that holds its preset if there is one, else to the
        one whose preset is least in demand (none of those jobs needs it, and the fewest of the
        latest ``RECENT_PRESETS`` submits asked for it); ``worker_id`` gets the job matched to it
        (None when there are fewer jobs than waiting workers and it got none). Every caller that
        sees the same waiting workers computes the same match, so each takes its own part."""
        workers = dict(idle or {})
        workers[worker_id] = preset
        order = self.order()[: len(workers)]
        if not order:
            return None
        chosen = self._match(order, workers).get(worker_id)
        if chosen is None:
            return None
        job = self._jobs[chosen]
        rank, ticket = RANK[job.priority], self._tickets[job.id]
        for other in self._queued:  # the jobs it passes: lower priority, waiting since before it
            waiting = self._jobs[other]
            if RANK[waiting.priority] < rank and self._tickets[other] < ticket:
                waiting.passes += 1
        self._unqueue(job)
        self._served[job.station] = self._tick  # fair: this station goes to the back of the line
        self._tick += 1
        job.status = JobStatus.PROCESSING
        job.started_at = self._clock()
        job.worker_id = worker_id
        job.attempts += 1
        self._running[job.id] = job
        self._bump(job)
        return job

    def _match(self, order: list[str], workers: dict[str, str | None]) -> dict[str, str]:
        """worker id -> job id for the jobs about to start (see ``claim``)."""
        free = sorted(workers)  # a fixed order, the same for every caller
        wanted = [self._jobs[i].preset for i in order]
        out: dict[str, str] = {}
        for n, job_id in enumerate(order):
            later = set(wanted[n + 1:])
            holder = next((w for w in free if workers[w] == wanted[n]), None)
            if holder is None:  # someone must switch: the one whose preset is least in demand
                # (needed by none of these jobs, then the least asked for lately)
                holder = min(free, key=lambda w: (workers[w] in later, self._recent.count(workers[w])))
            free.remove(holder)
            out[holder] = job_id
        return out

    def _ticket(self, job_id: str) -> None:
        self._tickets[job_id] = self._next_ticket
        self._next_ticket += 1

    def requeue(self, job_id: str, charge: bool = True) -> Job:
        """Put a processing job whose worker was lost back in the queue in its submission order, to
        run again (in FIFO that is ahead of every job never started; several requeued jobs keep the
        order they were submitted in, the order a restart restores too); its input payload must
        still be there.

        ``charge=False`` (a graceful stop interrupted it, not a fault): the start does not count
        against the job's attempts."""
        job = self._running.pop(job_id)
        if not charge:
            job.attempts = max(0, job.attempts - 1)
        job.status, job.started_at, job.worker_id = JobStatus.QUEUED, None, None
        job.step, job.step_seconds, job.preview_step = 0, None, None
        ticket = self._tickets[job.id]
        at = next((i for i, other in enumerate(self._queued) if self._tickets[other] > ticket), len(self._queued))
        self._queued.insert(at, job.id)
        self._order = None
        self._bump(job)
        return job

    def discard(self, job_id: str) -> None:
        """Forget a job that was just submitted (its storing failed): as if it never came."""
        job = self._jobs.pop(job_id)
        del self._tickets[job_id]
        if job.status is JobStatus.QUEUED:
            self._queued.remove(job_id)
        if job.idempotency_key is not None:
            self._keys.pop((job.station, job.idempotency_key), None)
        self._order = None
        self.feed.removed([job_id])

    def restore(self, jobs: list[Job]) -> None:
        """Rebuild from stored jobs, given in submission order: queued ones queue again in that
        order, processing ones stay processing (their worker may still report; if it does not, the
        caller requeues or fails them), finished ones stay readable until they expire."""
        for job in jobs:
            self._jobs[job.id] = job
            self._ticket(job.id)
            if job.status is JobStatus.QUEUED:
                self._queued.append(job.id)
            elif job.status is JobStatus.PROCESSING:
                self._running[job.id] = job
            elif job.status is JobStatus.COMPLETED:
                self.completed_total += 1
            elif job.status is JobStatus.FAILED:
                self.failed_total += 1
            else:
                self.cancelled_total += 1
            if job.idempotency_key is not None:
                self._keys[(job.station, job.idempotency_key)] = job.id
        self._order = None
        self._bump(*jobs)
        for job in sorted((j for j in jobs if j.status.terminal), key=lambda j: j.completed_at or 0.0):
            self._ended_now(job)

    def _unqueue(self, job: Job) -> None:
        self._queued.remove(job.id)
        self._order = None

    def progress(self, job_id: str, step: int, total: int, step_seconds: float | None) -> Job | None:
        """Record a running job's denoising progress; None if it is not running (any more)."""
        job = self._running.get(job_id)
        if job is None:
            return None
        # max: reports travel without waiting, so a late one must not move the job backwards
        job.step, job.total_steps = max(job.step, min(step, total)), max(total, 1)
        if step_seconds is not None and step_seconds > 0:
            job.step_seconds = step_seconds
        self._bump(job)
        return job

    def preview(self, job_id: str, step: int) -> Job | None:
        """Record that a running job that asked for previews has one for ``step``; None when it is
        not running, did not ask, or already has a later one (reports travel without waiting)."""
        job = self._running.get(job_id)
        if job is None or not job.previews or (job.preview_step or 0) >= step:
            return None
        job.preview_step = step
        self._bump(job)
        return job

    def cancel(self, job_id: str, reason: str | None = None) -> tuple[Job, bool]:
        """Take a job back: (the job, whether it was processing, so its worker must stop).

        Queued: it never runs. Processing: it ends now as ``cancelled`` and its slot is free.
        Already cancelled: harmless, returned as is. Completed or failed: ``Conflict``. ``reason``
        (a missed deadline) is kept as the job's ``error``."""
        job = self.get(job_id)
        if job.status is JobStatus.CANCELLED:
            return job, False
        if job.status.terminal:
            raise Conflict(f"Job {job_id} is already {job.status.value}; only queued or processing jobs "
                           "can be cancelled.")
        was_running = job.status is JobStatus.PROCESSING
        if was_running:
            self._running.pop(job.id)
        else:
            self._unqueue(job)
        job.status = JobStatus.CANCELLED
        job.completed_at = self._clock()
        job.payload = job.pixels = None
        job.error = reason
        self.cancelled_total += 1
        self._bump(job)
        self._ended_now(job)
        return job, was_running

    def overdue(self) -> list[tuple[Job, str]]:
        """Unfinished jobs past a deadline, each with the sentence to cancel it with."""
        now, late = self._clock(), []
        for job in self._jobs.values():
            if job.status.terminal:
                continue
            if job.status is JobStatus.QUEUED and job.start_by is not None and now > job.start_by:
                late.append((job, f"Cancelled: not started within {job.start_by - job.created_at:g}s "
                                  "(start_within_seconds)."))
            elif job.finish_by is not None and now > job.finish_by:
                late.append((job, f"Cancelled: not finished within {job.finish_by - job.created_at:g}s "
                                  "(deadline_seconds)."))
        return late

    def complete(self, job_id: str, result_name: str, run_seconds: float | None = None,
                 full_steps: int | None = None) -> Job:
        job = self._finish(job_id, JobStatus.COMPLETED, run_seconds)
        job.result_name = result_name
        job.full_steps = full_steps
        job.step = job.total_steps or job.step
        self.completed_total += 1
        self._bump(job)
        self._ended_now(job)
        return job

    def fail(self, job_id: str, error: str, run_seconds: float | None = None) -> Job:
        job = self._finish(job_id, JobStatus.FAILED, run_seconds, measure=False)
        job.error = error
        self.failed_total += 1
        self._bump(job)
        self._ended_now(job)
        return job

    def _finish(self, job_id: str, status: JobStatus, run_seconds: float | None, measure: bool = True) -> Job:
        job = self._running.pop(job_id, None)
        if job is None:
            raise KeyError(f"job {job_id} is not processing")
        now = self._clock()
        job.status = status
        job.completed_at = now
        job.payload = job.pixels = None
        job.run_seconds = round(run_seconds, 3) if run_seconds is not None else None
        if measure:
            took = run_seconds if run_seconds is not None else now - (job.started_at or now)
            self.estimates.measured(job.preset, took)
        return job

    def expire(self) -> list[Job]:
        """Remove finished jobs older than the cleanup age; returns them (their files are the caller's).
        Their idempotency keys go with them."""
        cutoff = self._clock() - self.cleanup_age_s
        gone = []
        while self._expiring and self._expiring[0][0] <= cutoff:  # oldest first: no walk over every job
            job = self._jobs.get(self._expiring.popleft()[1])
            if job is not None and job.status.terminal:
                gone.append(job)
        for job in gone:
            del self._jobs[job.id]
            del self._tickets[job.id]
            if job.idempotency_key is not None:
                self._keys.pop((job.station, job.idempotency_key), None)
        if gone:
            self.feed.removed([job.id for job in gone])
            self.feed.forget_ended(self._jobs.__contains__)
        return gone

    # --- reads ---------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id, self.cleanup_age_s)
        return job

    def get_for(self, job_id: str, station: str, admin: bool = False) -> Job:
        """The job, if ``station`` may see it (its own, or any for an admin); else ``JobNotFound``,
        the same answer as for an unknown id, so ids of other stations' jobs reveal nothing."""
        job = self.get(job_id)
        if not admin and job.station != station:
            raise JobNotFound(job_id, self.cleanup_age_s)
        return job

    def jobs_for(self, station: str, admin: bool = False, limit: int = 20) -> list[Job]:
        """The station's jobs (every station's for an admin), newest first, at most ``limit``."""
        mine = (j for j in reversed(self._jobs.values()) if admin or j.station == station)
        return [job for _, job in zip(range(limit), mine)]

    def order(self) -> list[str]:
        """Queued job ids in the order they will start (``start_order``; cached until the queue
        changes): by priority, the policy within one priority, and a job passed ``max_passes`` times
        first."""
        if self._order is None:
            order = start_order(self._jobs, self._queued, fair=self.scheduling == "fair", served=self._served,
                                tick=self._tick, max_passes=self.max_passes)
            self._order = order
            self._positions = {job_id: n for n, job_id in enumerate(order, start=1)}
        return self._order

    def worker_starting(self, expected_at: float | None) -> None:
        """No worker is up and one is starting, expected ready at ``expected_at`` (this queue's
        clock); None: a worker is up (or none is coming)."""
        if expected_at != self._worker_expected_at:
            self._worker_expected_at = expected_at
            self._bump(*(self._jobs[i] for i in self._queued))

    def _not_before(self) -> float:
        """Seconds until a worker can start a job: 0 with a worker up; while one starts, what is
        left of its measured start time (at least 1: it is late, not there)."""
        if self._worker_expected_at is None:
            return 0.0
        return max(1.0, self._worker_expected_at - self._clock())

    def waiting_message(self, job: Job) -> str | None:
        """Why a queued job waits, when it is not only for the jobs ahead of it."""
        if job.status is not JobStatus.QUEUED or self._worker_expected_at is None:
            return None
        return (f"Waiting for a model worker to start (about {math.ceil(self._not_before())} s more); "
                "the server starts workers when jobs arrive.")

    def position(self, job: Job) -> int | None:
        if job.status is not JobStatus.QUEUED:
            return None
        self.order()
        return self._positions[job.id]

    # --- estimates (``estimates``) ----------------------------------------------------------------

    def average_seconds(self, preset: str) -> float:
        return self.estimates.average(preset)

    def estimated_start(self, job: Job) -> float:
        """Seconds until ``job`` should start: 0 when it runs already."""
        if job.status is not JobStatus.QUEUED:
            return 0.0
        ahead = [self._jobs[i] for i in self.order()[: self.position(job) - 1]]
        return self.estimates.start_after(ahead, self._running.values(), self.worker_slots, self._not_before())

    def estimated_wait(self, job: Job, start: float | None = None) -> int:
        """Whole seconds until ``job``'s result should be ready (queue wait plus its own run time);
        ``start``: its ``estimated_start`` when the caller has it."""
        if job.status.terminal:
            return 0
        return self.estimates.wait(job, self._start(job, start))

    def _start(self, job: Job, start: float | None) -> float:
        """An unfinished job's ``estimated_start``: ``start`` when the caller has it."""
        if start is None and job.status is JobStatus.QUEUED:
            return self.estimated_start(job)
        return start or 0.0

    def retry_after(self) -> int:
        """Whole seconds until a place in the queue should free up (at least 1)."""
        first = self._jobs[self.order()[0]] if self._queued else None
        return self.estimates.retry_after(list(self._running.values()), first, self.worker_slots)

    def result_names(self) -> set[str]:
        return {j.result_name for j in self._jobs.values() if j.result_name}

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
            "cancelled_count": self.cancelled_total,
            "scheduling": self.scheduling,
        }

    def active_views(self) -> list[JobView]:
        """The views of every queued and processing job (queued ones in start order), as of now."""
        queued = [self._jobs[job_id] for job_id in self.order()]
        starts = self.estimates.starts(queued, self._running.values(), self.worker_slots, self._not_before())
        return ([self.view(job) for job in self._running.values()]
                + [self.view(self._jobs[job_id], start) for job_id, start in starts.items()])

    def view(self, job: Job, start: float | None = None) -> JobView:
        """The contract's status object for one job, as of now (``start``: its ``estimated_start``
        when the caller has it)."""
        wait = eta = None
        if not job.status.terminal:  # (a queued job's start, found once for both)
            start = self._start(job, start)
            wait, eta = self.estimates.wait(job, start), self.estimates.eta(job, start)
        return job_view(job, self.position(job), wait, eta, self.version, self.waiting_message(job))
