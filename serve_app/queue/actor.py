"""The singleton job queue: a one-replica Serve deployment wrapping ``queue_core.JobQueue``.

Why a deployment and not a named actor: a named actor created by an ingress replica dies with that
replica and races redeploys; a one-replica deployment is owned by Serve, outlives ingress replicas,
and is torn down with the app.

Roles:
- the ingress calls ``submit``, ``status``, ``result``, ``wait``, ``watch`` (status changes, for the
  events stream), ``cancel``, ``queue_stats``, ``health``, ``load_model``, always naming the caller
  (station, admin) so a station only ever reaches its own jobs;
- model workers *pull* work with ``next_task`` (a long poll), report ``progress`` after every
  denoising step (fire and forget), listen on ``cancel_signal`` while a job runs, then report
  ``job_done`` / ``job_failed`` / ``load_done``. Pulling keeps FIFO exact and gives each worker one job at a time,
  however many replicas run, without the queue having to address replicas.

Every method a caller reaches is ``async``, so all of them run on the replica's single event loop
(Serve runs plain ``def`` methods in a thread pool, which would race the loop), and the core's
admission check and insert happen in one synchronous step, so the cap holds exactly under any
concurrency. Image bytes and result PNGs travel through Ray; result files are written here, under
the results folder.
Durability: every job and its inputs are committed to SQLite (``jobstore.JobStore``, in the state
folder) before the station's submit is answered, and every state change is recorded. A new replica
(after a crash, a ``ray.kill``, or a restart of the whole server on the same state folder) rebuilds
the queue from it: queued jobs in their order, finished jobs with their result files. A job that was
processing keeps its worker for ``workers.WORKER_SILENCE_S``; if that worker does not report, the job runs
again once (``attempts`` counts starts), and fails with ``worker lost`` if it is interrupted again.
The same holds for a job whose lease ran out (``workers.WorkerRegistry``: its worker, alive or not,
made no progress on it for ``job_lease_seconds``): run once more, then failed with a sentence.
The database is trusted only when it is whole (``statefolder.open_checked``): a damaged one leaves
this replica up serving nothing (every ingress call answers 503 with the sentence, health says
``damaged``) and deleting nothing, instead of restoring an empty queue in its place.
"""

import asyncio
import functools
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ray import serve

from ..auth import Caller, job_priority
from ..background import Background
from ..config import Settings
from ..contract.protocol import (DEFAULT_WEBHOOK_EVENTS, Changes, JobDone, JobFailed, JobRequest, JobStatus, JobTask,
                                 JobView, LoadDone, LoadTask, Outcome, PreviewReport, StepReport, WorkerState)
from ..errors import (ApiError, LoadInProgress, NoModelLoaded, PreviewNotReady, QueueFull, ResultNotReady,
                      ServiceUnavailable, StartTooLate, StationLimit)
from ..logs import for_job, use_serve_handlers
from ..metrics import QueueMetrics
from ..presets import Preset, require_available, resolve
from ..webhooks import Notifier
from .core import Job, JobQueue
from .jobstore import StateLock
from .statefolder import StateDamaged, open_checked
from .storage import ResultStore, result_name, storage_reason
from .workers import WorkerInfo, WorkerRegistry

log = logging.getLogger(__name__)
CLEANUP_PERIOD_S = 1.0
SWEEP_PERIOD_S = 300.0  # orphaned result files older than the TTL are looked for this often
LOST = "worker lost: the model worker stopped while running this job; submit it again"
MAX_ATTEMPTS = 2  # a job interrupted by a lost worker runs once more, then fails with LOST
LEASE_EXPIRED = ("the model worker made no progress on this job for {seconds:g} seconds (its lease ran out) "
                 "twice; submit it again")


def answers(method):
    """For the methods the ingress calls: an ``ApiError`` (a 404, a full queue's 429, ...) is the
    call's answer, returned rather than raised, so Serve does not log each refusal as a failed
    request with its traceback; the ingress's client raises it again (``contract.queue_client``).
    While the job database is damaged every such call answers 503 with the sentence that says so."""
    @functools.wraps(method)
    async def answer(self, *args, **kwargs):
        if self.damaged is not None:
            return ServiceUnavailable(self.damaged)
        try:
            return await method(self, *args, **kwargs)
        except ApiError as err:
            return err

    return answer


@dataclass
class LoadRequest:
    preset: Preset
    pending: set[str]
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


# A replaced replica (a redeploy) gets 5 s to answer what it has in flight, not Serve's 20 s: its
# successor waits for it (StateLock), and the long polls it would wait for (workers asking for jobs,
# /edit waits, event streams) are all retried by their callers.
@serve.deployment(num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0},
                  graceful_shutdown_timeout_s=5, graceful_shutdown_wait_loop_s=1)
class QueueActor:
    async def __init__(self, settings: Settings):
        # No access log: workers long-poll this replica every few seconds, which would drown the job
        # log. (Not the deployment's logging_config: that would override the YAML's for this replica.)
        use_serve_handlers(access_log=False)
        self.settings, own = settings, settings.queue
        self.presets = settings.presets
        self.default_preset = settings.default_preset
        self.core = JobQueue(
            max_size=settings.max_queue_size,
            cleanup_age_s=settings.cleanup_age_seconds,
            nominal_seconds={p.name: p.nominal_seconds for p in self.presets.values()},
            scheduling=own.scheduling,
            max_per_station=own.max_jobs_per_station,
            max_passes=own.priority_max_passes,
        )
        self.notifier = (Notifier(own.webhook_secret, own.webhook_retry_seconds,
                                  own.webhook_timeout_seconds) if own.webhook_secret else None)
        self.store = ResultStore(own.results_dir)
        self.state_lock = StateLock(Path(own.jobs_db))
        await self._hold_state_lock()
        # The database is trusted only when it is whole (statefolder): damaged, this replica stays
        # up serving nothing (no crash loop of the deploy), deletes nothing, and says why.
        self.damaged: str | None = None
        try:
            self.jobs, note = open_checked(Path(own.jobs_db), Path(own.results_dir))
            if note:
                log.info("[JobQueue] %s", note)
        except StateDamaged as exc:
            self.jobs, self.damaged = None, exc.public
            log.error("[JobQueue] %s", exc)
        # File and database work runs here, one task at a time in the order asked, never on the event
        # loop (a commit of a 30 MB input or an fsync on a slow disk would stall every station's poll).
        self._io_pool = ThreadPoolExecutor(1, thread_name_prefix="queue-io")
        self.db_problem: str | None = None  # the last failed commit, for health, until one succeeds
        if self.jobs is not None:
            self.core.restore(self.jobs.load())
            self._sweep_orphans(self.core.result_names(), at_start=True)
        self._swept = time.monotonic()
        self.registry = WorkerRegistry(settings.job_lease_seconds)
        self._waiting: dict[str, str | None] = {}  # workers in a next_task long poll -> the preset each holds
        self.preset_switches = 0  # jobs handed to a worker that held another preset
        self.previews: dict[str, tuple[int, bytes]] = {}  # running job -> (step, JPEG) of its latest preview
        self.load: LoadRequest | None = None
        self.stopping = False  # set by drain(): no new job is handed out
        # Why results cannot be stored now (for health), refreshed by every cleanup pass; and the last
        # failed write (its warning, its size), kept until a result of that size fits again.
        self.storage_problem: str | None = None
        self.store_failure: tuple[str, int] | None = None
        self.metrics = QueueMetrics()
        self.epoch = uuid.uuid4().hex  # names this replica's versions in the change feed
        self._changed = asyncio.Event()
        self._sched_checked, self._sched_reason = -1e9, None
        self._background = Background(log, "[JobQueue]")  # deadline passes, hand-out commits
        self._cleanup_task = asyncio.get_running_loop().create_task(self._cleanup_loop())
        log.info("[JobQueue] Started - Max size: %d, Cleanup age: %ss - restored %d job(s) from %s",
                 settings.max_queue_size, int(settings.cleanup_age_seconds), self.core.stats()["total_jobs"],
                 own.jobs_db)

    # --- plumbing ------------------------------------------------------------------------------

    async def _hold_state_lock(self) -> None:
        """Wait until this replica is the state folder's only queue (a replica it replaces has
        exited); say why in the log while waiting."""
        start, said = time.monotonic(), 0.0
        while not self.state_lock.try_acquire():
            waited = time.monotonic() - start
            if waited >= said + (5 if said == 0 else 60):
                said = waited
                log.log(logging.INFO if waited < 60 else logging.ERROR,
                        "[JobQueue] Waiting %.0fs for %s: another queue replica still uses this state folder "
                        "(the one this replica replaces, or another app pointed at the same state_dir)",
                        waited, self.state_lock.path)
            await asyncio.sleep(0.2)

    def _notify(self) -> None:
        """Wake every long poll; each re-checks what it waits for."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, check, timeout: float, poll: float | None = None):
        """The first truthy value of ``check()`` (a function or a coroutine function), re-checked at
        every change of the queue and at least every ``poll`` seconds; None once ``timeout`` seconds
        have passed (checked once even with a timeout of 0). The one wait loop of this replica."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self._wait_change(min(left, poll) if poll else left)

    async def _wait_change(self, timeout: float) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=max(timeout, 0))
        except asyncio.TimeoutError:
            pass

    def _sweep_orphans(self, named: set[str], at_start: bool = False) -> None:
        """Result files that are provably orphans (``ResultStore.sweep``): of no job and older than
        the TTL (written just before a crash, or of jobs expired meanwhile), and half-written ones."""
        gone = self.store.sweep(named, time.time() - self.settings.cleanup_age_seconds, all_partials=at_start)
        if gone:
            log.info("[JobQueue] removed %d result file(s) of no job, older than the TTL", len(gone))

    async def _expire(self) -> None:
        gone = self.core.expire()
        for job in gone:
            log.info("[JobQueue] Job %s expired and was removed", job.id[:8], extra=for_job(job.id))
        if gone:
            await self._io(self._forget, [job.result_name for job in gone if job.result_name],
                           [job.id for job in gone])

    def _forget(self, names: list[str], job_ids: list[str]) -> None:
        """(I/O thread.) Expired jobs' result files and records; disk use goes back down with them."""
        for name in names:
            self.store.delete(name)
        self.jobs.delete(job_ids)
        self.jobs.compact()

    async def _cleanup_loop(self) -> None:
        period = min(CLEANUP_PERIOD_S, self.settings.cleanup_age_seconds / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self._expire()
                await self._enforce_deadlines()
                await self._prune_workers()
                # The gauges' one writer: every pass (a gauge is exported when set, so each scrape
                # sees a value at most a second old; progress steps do not pay for it).
                running = len(self.core.running())
                self.metrics.occupancy(self.core.occupancy - running, running)
                await self._check_storage()
                if self.jobs is not None and time.monotonic() - self._swept >= SWEEP_PERIOD_S:
                    self._swept = time.monotonic()
                    await self._io(self._sweep_orphans, self.core.result_names())  # (named: read here)
            except Exception:  # keep cleaning whatever one pass hit
                log.exception("[JobQueue] cleanup pass failed")

    async def _io(self, fn, *args):
        """Run ``fn(*args)`` on the queue's I/O thread and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, functools.partial(fn, *args))

    async def _persist(self, job: Job) -> None:
        """Record ``job``'s state as it is now: the one path after every change of the core. A commit
        that fails (the state folder's disk full or read-only) is logged and shown in health; the
        queue carries on from memory, so no job is stuck on it."""
        await self._committed(job, self._persist_soon(job))

    def _persist_soon(self, job: Job) -> asyncio.Future:
        """``job``'s state as it is now, queued for the I/O thread at once (so in order with every
        other write) without waiting for it; the commit's future (await it with ``_committed``)."""
        return asyncio.get_running_loop().run_in_executor(self._io_pool, self.jobs.write, self.jobs.snapshot(job))

    async def _committed(self, job: Job, commit: asyncio.Future) -> None:
        try:
            await commit
            self.db_problem = None
        except Exception as exc:
            log.error("[JobQueue] Job %s: could not record its state: %s", job.id[:8], exc, extra=for_job(job.id))
            self.db_problem = (f"The job database could not be written ({type(exc).__name__}: {exc}); jobs "
                               "changed since then would not survive a restart. Check the state folder's disk.")

    async def _check_storage(self) -> None:
        min_free = int(self.settings.queue.min_free_disk_mb * 2**20)
        self.storage_problem = await asyncio.to_thread(self.store.problem, min_free)
        if self.store_failure and await asyncio.to_thread(self.store.problem, self.store_failure[1]) is None:
            self.store_failure = None  # writable again, with room for a result that size

    def _alive_workers(self) -> list[WorkerInfo]:
        return self.registry.alive()

    def _usable_workers(self) -> list[WorkerInfo]:
        return self.registry.usable()

    async def _prune_workers(self) -> None:
        for wid in self.registry.forget_silent():
            log.warning("[JobQueue] Worker %s went silent; forgetting it", wid)
        alive = {w.id for w in self._alive_workers()}
        running = self.core.running()
        expired = set(self.registry.expired([job.id for job in running]))
        if self.registry.settled():
            for job in running:
                if job.worker_id not in alive:
                    await self._interrupted(job, "its worker was lost", LOST)
                elif job.id in expired:
                    await self._interrupted(job, f"no progress for {self.registry.lease_s:g}s (lease expired)",
                                      LEASE_EXPIRED.format(seconds=self.registry.lease_s))
        self.core.worker_slots = max(1, len(self._usable_workers()))
        if self.load:
            self.load.pending &= alive

    async def _interrupted(self, job: Job, why: str, error: str) -> None:
        """A running job its worker will not finish: queued again once (``attempts`` counts the
        starts), failed with ``error`` after that."""
        if job.attempts < MAX_ATTEMPTS:
            await self._requeue(job)
            log.warning("[JobQueue] Job %s: %s; queued again (attempt %d of %d next)", job.id[:8], why,
                        job.attempts + 1, MAX_ATTEMPTS, extra=for_job(job.id))
            self._notify()
            return
        self.core.fail(job.id, error)
        await self._persist(job)
        log.warning("[JobQueue] Job %s failed - %s", job.id[:8], error, extra=for_job(job.id))
        self._finished(job)

    async def _requeue(self, job: Job, charge: bool = True) -> None:
        """A running job queued again (``JobQueue.requeue``), recorded; its preview goes with the run
        (the next run makes its own)."""
        self.core.requeue(job.id, charge)
        self.previews.pop(job.id, None)
        await self._persist(job)

    def unschedulable(self) -> str | None:
        """Why no model worker can run: every live worker is unusable (its profile cannot run on its
        device), or none is alive and no node could ever host one.

        A worker that is merely starting, or waiting for a busy resource, is not reported: only
        a requirement (GPUs, custom resources) that no live node of the cluster has at all."""
        alive = self._alive_workers()
        if alive and not self._usable_workers():
            return "No model worker can run: " + " ".join(sorted({w.detail or "unusable" for w in alive}))
        if alive:
            return None
        now = time.monotonic()
        if now - self._sched_checked < 5.0:
            return self._sched_reason
        self._sched_checked = now
        need = {k: v for k, v in self.settings.worker_resources.items() if v > 0}
        try:
            import ray

            if not ray.is_initialized():  # outside Ray (bench/load.py's plain server): nothing to ask
                return None
            nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        except Exception:
            return self._sched_reason
        fits = any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes)
        if fits:
            self._sched_reason = None
        else:
            total = {k: sum(node.get(k, 0) for node in nodes) for k in need}
            self._sched_reason = (
                "No model worker can be scheduled: each needs "
                + ", ".join(f"{k} {v:g}" for k, v in need.items())
                + " and no node of this cluster has that (cluster has "
                + ", ".join(f"{k} {v:g}" for k, v in total.items())
                + "). On a machine without a GPU, serve config/serve.yaml.")
        return self._sched_reason

    def _finished(self, job: Job) -> None:
        """A job reached a terminal state: wake the watchers, and call its webhook if it has one."""
        self.previews.pop(job.id, None)  # its result (or its end) replaces the preview
        self._notify()
        self.metrics.outcome(job.status.value)
        if job.status is JobStatus.COMPLETED:
            self.metrics.completed(job.preset, job.run_seconds)
        self._webhook(job, job.status.value)

    def _webhook(self, job: Job, event: str) -> None:
        """Call the job's webhook for ``event`` if the station asked for it (by default: the final
        states)."""
        if not job.webhook_url or self.notifier is None:
            return
        events = job.webhook_events.split(",") if job.webhook_events else DEFAULT_WEBHOOK_EVENTS
        if event in events:
            self.notifier.send(job.webhook_url, self.core.view(job).as_dict(), event)

    def check_health(self) -> None:
        if self._cleanup_task.done():
            raise RuntimeError("the queue's cleanup loop stopped")

    # --- ingress API ---------------------------------------------------------------------------

    def resolve_preset(self, name: str | None) -> Preset:
        if name is None:
            if self.default_preset is None:
                raise NoModelLoaded()
            name = self.default_preset
        preset = resolve(self.presets, name)
        require_available(preset)
        return preset

    @answers
    async def admit(self, caller: Caller, key: str | None, fingerprint: str | None) -> JobView | None:
        """Before the ingress decodes an upload, when its mirror does not show room: the view of the
        job an earlier identical request with this key created (422 if that request was a different
        one), whatever the occupancy; else ``QueueFull`` / ``StationLimit`` now if a submit would be
        refused; else None. ``submit`` still decides, atomically."""
        await self._expire()
        job = self.core.find_idempotent(caller.station, key, fingerprint)
        if job is not None:
            return self.core.view(job)
        try:
            self.core.check_room(caller.station)
        except (QueueFull, StationLimit):
            self.metrics.outcome("refused")
            raise
        return None

    @answers
    async def submit(self, request: JobRequest, caller: Caller) -> tuple[JobView, bool]:
        """(the job's view, whether it was created now): False when an idempotent retry got the
        job an identical earlier request created."""
        await self._expire()
        r = request
        earlier = self.core.find_idempotent(caller.station, r.idempotency_key, r.fingerprint)
        if earlier is not None:
            return self.core.view(earlier), False
        chosen = self.resolve_preset(r.preset)
        reason = self.unschedulable()
        if reason:  # refuse rather than accept a job that can never run
            raise ServiceUnavailable(reason)
        # No await between the check and the insert below: admission (and the idempotency check,
        # for concurrent duplicates) is atomic.
        try:
            job = self.core.submit(r.job_id, instruction=r.instruction, preset=chosen.name, seed=r.seed,
                                   system_prompt=r.system_prompt, payload=r.images, pixels=r.pixels,
                                   station=caller.station,
                                   idempotency_key=r.idempotency_key, fingerprint=r.fingerprint,
                                   webhook_url=r.webhook_url, webhook_events=",".join(r.webhook_events),
                                   total_steps=chosen.steps, start_within_s=r.start_within_seconds,
                                   deadline_s=r.deadline_seconds, priority=job_priority(r.priority, caller),
                                   previews=r.previews)
        except (QueueFull, StationLimit, StartTooLate):
            self.metrics.outcome("refused")
            raise
        if job.id != r.job_id:
            return self.core.view(job), False
        try:  # committed before the station hears "queued"
            await self._io(self.jobs.save, job, r.images)
        except Exception:
            self.core.discard(job.id)
            log.exception("[JobQueue] Could not store job %s", job.id[:8], extra=for_job(job.id))
            raise ServiceUnavailable("The server could not store the job (its disk may be full or "
                                     "read-only); nothing was queued. Try again later.") from None
        self._notify()
        self._arm_deadlines(job)
        self.metrics.outcome("accepted")
        log.info("[JobQueue] Job %s submitted - Queue size: %d - preset %s - station %s",
                 job.id[:8], self.core.occupancy, chosen.name, caller.station, extra=for_job(job.id))
        return self.core.view(job), True

    @answers
    async def status(self, job_id: str, caller: Caller) -> JobView:
        await self._expire()
        return self.core.view(self.core.get_for(job_id, caller.station, caller.admin))

    @answers
    async def cancel(self, job_id: str, caller: Caller) -> JobView:
        """Cancel a job (see ``JobQueue.cancel``); a running job's worker hears it on ``cancel_signal``."""
        await self._expire()
        job = self.core.get_for(job_id, caller.station, caller.admin)
        already = job.status is JobStatus.CANCELLED
        job, was_running = self.core.cancel(job.id)
        if not already:
            await self._cancelled(job, was_running, f"by station {caller.station}")
        return self.core.view(job)

    async def _cancelled(self, job: Job, was_running: bool, why: str) -> None:
        """After the core cancelled ``job``: recorded, logged, its worker told (``cancel_signal``)."""
        await self._persist(job)
        log.info("[JobQueue] Job %s cancelled %s%s", job.id[:8], why, " while processing" if was_running else "",
                 extra=for_job(job.id))
        if was_running:
            self._worker_freed(job.worker_id)
        self._finished(job)

    async def _enforce_deadlines(self) -> None:
        """Cancel the jobs that missed their start or finish deadline. Runs when a job's deadline
        falls due (``_arm_deadlines``) and on every cleanup pass (1 s), which catches a deadline whose
        timer was lost with a restart. All are cancelled before the first await, so two passes at
        once never cancel a job twice."""
        ended = [self.core.cancel(job.id, reason) for job, reason in self.core.overdue()]
        for job, was_running in ended:
            await self._cancelled(job, was_running, "on its deadline")

    def _arm_deadlines(self, job: Job) -> None:
        """Check ``job``'s deadlines the moment they fall due: a ``Cancel-After: 500ms`` means half a
        second, not up to the next cleanup pass a second later."""
        loop = asyncio.get_running_loop()
        for due in (job.start_by, job.finish_by):
            if due is not None:  # (a hair after: a deadline is missed once it has passed)
                loop.call_later(max(0.0, due - job.created_at) + 0.005, self._deadline_due)

    def _deadline_due(self) -> None:
        self._background.start(self._enforce_deadlines())

    @answers
    async def watch(self, job_id: str, caller: Caller, last: tuple | None, timeout: float) -> JobView | None:
        """Long poll for the events stream: the job's view as soon as it differs from ``last`` (a
        ``JobView.signature``), or None after ``timeout`` seconds (the stream sends a heartbeat then)."""
        def changed():
            view = self.core.view(self.core.get_for(job_id, caller.station, caller.admin))
            return view if last is None or view.signature() != tuple(last) else None

        return await self._until(changed, timeout)

    @answers
    async def result(self, job_id: str, caller: Caller) -> tuple[str, bytes, JobView]:
        await self._expire()
        job = self.core.get_for(job_id, caller.station, caller.admin)
        if job.status is not JobStatus.COMPLETED or not job.result_name:
            raise ResultNotReady(f"Job {job_id} has no result yet: its status is {job.status.value}."
                                 + (f" Error: {job.error}" if job.error else ""))
        try:
            data = await asyncio.to_thread(self.store.read, job.result_name)
        except FileNotFoundError:
            raise ResultNotReady(f"The result of job {job_id} is no longer on this server.") from None
        return job.result_name, data, self.core.view(job)

    @answers
    async def wait(self, job_id: str, timeout: float, caller: Caller) -> JobView:
        """The job's status once it is finished, or when ``timeout`` passes, whichever is first."""
        def finished():
            job = self.core.get_for(job_id, caller.station, caller.admin)
            return self.core.view(job) if job.status.terminal else None

        return (await self._until(finished, timeout, poll=5.0)
                or self.core.view(self.core.get_for(job_id, caller.station, caller.admin)))

    @answers
    async def station_jobs(self, caller: Caller, limit: int = 20) -> list[JobView]:
        """The caller's recent jobs, newest first (an admin's: every station's)."""
        await self._expire()
        return [self.core.view(job) for job in self.core.jobs_for(caller.station, caller.admin, limit)]

    @answers
    async def queue_stats(self) -> dict:
        await self._expire()
        return self._stats()

    def _stats(self) -> dict:
        return {**self.core.stats(), "preset_switches": self.preset_switches}

    async def changes(self, epoch: str | None, since: int | None, timeout: float) -> Changes:
        """The change feed of the ingress replicas' mirrors (``mirror.Mirror``): a long poll that
        answers at the queue's next change (a job's, or one that health shows, such as a stop or a
        load) when nothing changed after version ``since`` of this queue replica's ``epoch`` yet,
        at once otherwise, and after ``timeout`` seconds regardless (every unfinished job's view is
        made anew: ETAs tick), with the queue's stats and health. Another epoch (this replica
        replaced an earlier one) or none: everything."""
        if epoch != self.epoch:
            since = None
        elif since == self.core.version:
            await self._wait_change(timeout)
        core = self.core.changes(since)
        return Changes(self.epoch, core.version, core.full, core.views, core.removed,
                       self._stats(), await self.health())

    async def health(self) -> dict:
        workers = self._alive_workers()
        states = [w.state for w in workers]
        reason = self.unschedulable()
        warnings = [reason] if reason else []
        warnings += [w for w in (self.damaged, self.storage_problem, self.store_failure and self.store_failure[0],
                                 self.db_problem) if w]
        warnings += [f"Worker {w.id[-12:]} takes no jobs: {w.detail}" for w in workers
                     if w.state == WorkerState.UNUSABLE and not reason]
        if self.stopping:
            warnings.append("The server is stopping: running jobs finish, queued and new jobs wait "
                            "for the next start.")
        return {
            "warnings": warnings,
            "damaged": self.damaged is not None,  # the ingress answers 503 "unhealthy" (not shown as a field)
            "current_model": self.default_preset,
            "model_loaded": any(s in (WorkerState.READY, WorkerState.BUSY) for s in states),
            "is_loading": self.load is not None or any(s in (WorkerState.STARTING, WorkerState.LOADING)
                                                       for s in states),
            "is_generating": bool(self.core.running()),
            "queue_max_size": self.core.max_size,
            "queue_cleanup_age_seconds": self.core.cleanup_age_s,
            "workers": [{"id": w.id[-12:], "state": w.state.value, "preset": w.preset, "detail": w.detail,
                         **w.placement} for w in workers],
        }

    @answers
    async def load_model(self, name: str) -> dict:
        preset = resolve(self.presets, name)
        require_available(preset)
        if self.load is not None:
            raise LoadInProgress(f"A model load is already running ({self.load.preset.name}). "
                                 "Try again when it finishes.")
        workers = self._usable_workers()
        if not workers and self.unschedulable():
            raise ServiceUnavailable(self.unschedulable())
        if not workers:
            raise ServiceUnavailable("No model worker is running yet (they may still be starting). "
                                     "Try again in a few seconds.")
        request = LoadRequest(preset=preset, pending={w.id for w in workers})
        self.load = request
        self._notify()
        log.info("[JobQueue] Loading preset %s on %d worker(s)", preset.name, len(workers))
        async def loaded():
            await self._prune_workers()  # a worker that died while loading is not waited for
            return not request.pending

        try:
            await self._until(loaded, self.settings.load_timeout_seconds, poll=1.0)
        finally:
            self.load = None
            self._notify()
        if not request.seconds:
            reason = "; ".join(sorted(set(request.errors.values()))) or "no worker finished loading in time"
            raise ServiceUnavailable(f"Loading {preset.name} failed: {reason}")
        self.default_preset = preset.name
        version = self.core.touch()  # the mirrors' health shows the new default from this version on
        self._notify()
        return {
            "version": version,
            "status": "success",
            "message": f"Model {preset.name} loaded successfully",
            "model": preset.name,
            "preset": preset.name,
            "model_name": preset.model_name,
            "load_time_seconds": round(max(request.seconds.values()), 3),
            "estimated_generation_time": preset.estimated_time,
        }

    async def drain(self) -> dict:
        """Graceful stop (called by ``qwen-serve`` on SIGTERM, before Serve is shut down): hand out
        no new job; wait up to ``graceful_stop_seconds`` for the running jobs to finish; queue the
        ones still running again (ahead of the never-started ones, in submission order) without charging an attempt
        (their workers hear it on ``cancel_signal`` and stop at the end of the current step).
        Queued jobs stay queued. Everything is in the job store when this returns, so the next start
        runs the requeued jobs first. Returns how many finished meanwhile and which were requeued."""
        self.stopping = True
        self._notify()
        running = {job.id for job in self.core.running()}
        log.info("[JobQueue] Stopping: waiting up to %.0fs for %d running job(s)",
                 self.settings.queue.graceful_stop_seconds, len(running))
        await self._until(lambda: not self.core.running(), self.settings.queue.graceful_stop_seconds, poll=1.0)
        left = self.core.running()
        for job in left:
            await self._requeue(job, charge=False)
            log.warning("[JobQueue] Job %s did not finish within the grace period; queued again for "
                        "the next start", job.id[:8], extra=for_job(job.id))
        self._notify()
        return {"finished": len(running) - len(left), "requeued": [job.id for job in left],
                "queued": self.core.stats()["queued_count"]}

    # --- worker API ----------------------------------------------------------------------------

    def _worker(self, worker_id: str) -> WorkerInfo:
        info, new = self.registry.seen(worker_id)
        if new:
            self.core.worker_slots = max(1, len(self._usable_workers()))
            log.info("[JobQueue] Worker %s joined", worker_id)
        return info

    async def heartbeat(self, worker_id: str, working_on: list[str] | tuple = ()) -> None:
        """The worker is alive; ``working_on``: the jobs it made progress on within the lease (their
        leases are renewed; a job it no longer names runs out of lease)."""
        self._worker(worker_id)
        for job_id in working_on:
            if self._held_job(worker_id, job_id, quiet=True) is not None:
                self.registry.renew(job_id)

    async def worker_state(self, worker_id: str, state: str, preset: str | None = None,
                     detail: str | None = None, placement: dict | None = None) -> None:
        info = self._worker(worker_id)
        info.state, info.preset, info.detail = WorkerState(state), preset, detail
        if placement:
            info.placement = placement

    async def next_task(self, worker_id: str, preset: str | None = None,
                        timeout: float = 5.0, ahead: bool = False) -> JobTask | LoadTask | None:
        """Long poll: the next thing this worker should do, or None after ``timeout`` seconds.

        A worker asks when it is idle; ``preset`` is the one it has loaded (None: none yet).
        ``ahead``: a busy worker on its current job's last step asks for its next job now (the job
        is ``processing`` from then on); answered at once, a job or None, never a load. None while
        another worker waits for a job: that one can start it now, this one only after its step."""
        if ahead:
            self._worker(worker_id)
            if self.stopping or self.load is not None or any(w != worker_id for w in self._waiting):
                return None
            job = self.core.claim(worker_id, preset, self._idle())
            return None if job is None else await self._hand_out(job)

        async def work():
            info = self._worker(worker_id)
            if preset is not None:
                info.state, info.preset = WorkerState.READY, preset
            elif info.state != WorkerState.FAILED:
                info.state = WorkerState.IDLE  # up, but no preset loaded yet
            if self.load and worker_id in self.load.pending:
                info.state = WorkerState.LOADING
                return LoadTask(self.load.preset)
            job = None if self.stopping else self.core.claim(worker_id, preset, self._idle())
            if job is None:
                return None
            # No longer waiting from this moment: while its hand-out awaits the database, the others
            # must not match jobs to it.
            self._waiting.pop(worker_id, None)
            return await self._hand_out(job)

        self._waiting[worker_id] = preset
        task = None
        try:
            task = await self._until(work, timeout)
            return task
        finally:
            self._waiting.pop(worker_id, None)
            if not isinstance(task, JobTask) and self.core.order():
                self._notify()  # a job matched to this worker goes to another one now

    def _idle(self) -> dict[str, str | None]:
        """The workers waiting for a job now, with the preset each holds (none with affinity off:
        then the asking worker takes the next job whatever it holds)."""
        return self._waiting if self.settings.queue.preset_affinity else {}

    async def _hand_out(self, job: Job) -> JobTask:
        """A job just claimed by its worker: leased, recorded, announced, and sent.

        Sent without waiting for its commit: the I/O thread may be busy committing other stations'
        uploads, and the worker should not idle behind them. The commit is queued first, so every
        later write of this job lands after it. A queue crash before it lands restores the job as
        queued with its attempt uncounted; the worker's report is then refused (``not yours``) and the
        job runs again, as after any lost lease."""
        self.registry.grant(job.id)
        self._background.start(self._committed(job, self._persist_soon(job)))
        info = self._worker(job.worker_id)
        if info.preset is not None and info.preset != job.preset:  # it switches before it starts
            self.preset_switches += 1
            self.metrics.switched(job.preset)
        info.state, info.preset = WorkerState.BUSY, job.preset
        self._notify()
        self.metrics.started(job.preset, (job.started_at or job.created_at) - job.created_at)
        log.info("[JobQueue] Processing job %s - %s", job.id[:8], job.instruction[:50], extra=for_job(job.id))
        self._webhook(job, "started")
        # The decoded images by reference when the ingress sent them (the bytes then stay here);
        # else the bytes, to decode.
        return JobTask(job.id, self.presets[job.preset], None if job.pixels is not None else job.payload,
                       job.instruction, job.seed, job.system_prompt, job.previews, job.pixels)

    async def inputs(self, worker_id: str, job_id: str) -> list[bytes] | None:
        """The uploaded bytes of a job this worker holds (its pixels could not be fetched: the
        ingress replica that sent them is gone); None when the job is no longer its."""
        job = self._held_job(worker_id, job_id)
        return None if job is None else job.payload

    def _held_job(self, worker_id: str, job_id: str, quiet: bool = False) -> Job | None:
        """The job, if this worker still holds it; None for a late report (cancelled, declared lost,
        or gone)."""
        job = next((j for j in self.core.running() if j.id == job_id), None)
        if job is not None and job.worker_id == worker_id:
            return job
        if not quiet:
            log.info("[JobQueue] Ignoring a late report on job %s from worker %s (cancelled or lost)",
                     job_id[:8], worker_id, extra=for_job(job_id))
        return None

    async def progress(self, worker_id: str, report: StepReport) -> None:
        """A denoising step finished (sent without waiting for the answer: never slows the worker)."""
        job = self._held_job(worker_id, report.job_id, quiet=True)
        if job is None:
            return
        self.registry.renew(report.job_id)
        if self.core.progress(report.job_id, report.step, report.total, report.step_seconds) is not None:
            self._notify()

    async def preview(self, worker_id: str, report: PreviewReport) -> None:
        """A live preview of a running job (sent without waiting, like progress); the latest is kept."""
        if self._held_job(worker_id, report.job_id, quiet=True) is None:
            return
        if self.core.preview(report.job_id, report.step) is not None:
            self.previews[report.job_id] = (report.step, report.jpeg)
            self._notify()

    @answers
    async def get_preview(self, job_id: str, caller: Caller) -> tuple[int, bytes]:
        """(step, JPEG) of the job's latest live preview; 404 with the reason when there is none."""
        job = self.core.get_for(job_id, caller.station, caller.admin)
        found = self.previews.get(job.id)
        if found is not None:
            return found
        if not job.previews:
            why = "it was submitted without previews=true"
        elif job.status is JobStatus.QUEUED:
            why = "it has not started yet"
        elif job.status is JobStatus.PROCESSING:
            why = "its first denoising step has not finished yet"
        else:
            why = f"it is {job.status.value}" + ("; download the result instead" if job.status is JobStatus.COMPLETED
                                                 else "")
        raise PreviewNotReady(f"Job {job_id} has no preview: {why}.")

    async def cancel_signal(self, worker_id: str, job_id: str, timeout: float) -> bool:
        """Long poll a worker keeps open while it runs a job: True as soon as the job is no longer
        this worker's to run (cancelled by its station, or declared lost), False after ``timeout``."""
        return bool(await self._until(lambda: self._held_job(worker_id, job_id, quiet=True) is None, timeout))

    async def job_done(self, worker_id: str, report: JobDone) -> Outcome:
        """A finished job's PNG: stored, then the job completed. Answers what became of the report:
        ``completed``; ``failed`` (the result could not be stored: the job failed at once with a
        sentence saying why, and frees its slot); ``not yours`` (cancelled or declared lost
        meanwhile). Any answer means the report arrived: the worker stops retrying it."""
        job_id, run_seconds = report.job_id, report.run_seconds
        job = self._held_job(worker_id, job_id)
        if job is None:
            return Outcome.NOT_YOURS
        name = result_name(job.preset, time.time(), job.seed, job.id)
        try:  # off the event loop: a large result on a slow disk must not stall every status poll
            await asyncio.to_thread(self.store.write, name, report.png)
        except OSError as exc:
            reason = storage_reason(exc)
            self.store_failure = (f"The last result could not be stored: {reason}.", len(report.png))
            return await self.job_failed(worker_id, JobFailed(
                job_id, f"The server could not store the result: {reason}. Submit the job again once the "
                "operator has fixed it.", run_seconds))
        if self._held_job(worker_id, job_id, quiet=True) is None:  # cancelled while the file was written
            await asyncio.to_thread(self.store.delete, name)
            return Outcome.NOT_YOURS
        self.store_failure = None
        self.core.complete(job_id, name, run_seconds)
        await self._persist(job)
        info = self._worker(worker_id)
        info.state, info.preset = self._idle_or_busy(worker_id), job.preset
        log.info("[JobQueue] Job %s completed in %.2fs - Path: %s", job_id[:8], run_seconds, name,
                 extra=for_job(job_id))
        self._finished(job)
        return Outcome.COMPLETED

    async def job_failed(self, worker_id: str, report: JobFailed) -> Outcome:
        """A job that raised (or whose result could not be stored): ``failed``, or ``not yours``."""
        job = self._held_job(worker_id, report.job_id)
        if job is None:
            return Outcome.NOT_YOURS
        self.core.fail(report.job_id, report.error, report.run_seconds)
        await self._persist(job)
        self._worker(worker_id).state = self._idle_or_busy(worker_id)
        log.warning("[JobQueue] Job %s failed after %.2fs - %s", report.job_id[:8], report.run_seconds, report.error,
                    extra=for_job(report.job_id))
        self._finished(job)
        return Outcome.FAILED

    def _worker_freed(self, worker_id: str | None) -> None:
        if worker_id in self.registry.workers:
            self.registry.workers[worker_id].state = self._idle_or_busy(worker_id)

    def _idle_or_busy(self, worker_id: str) -> WorkerState:
        """Workers encode a finished job's PNG while running the next job: still busy then."""
        busy = any(j.worker_id == worker_id for j in self.core.running())
        return WorkerState.BUSY if busy else WorkerState.READY

    async def load_done(self, worker_id: str, report: LoadDone) -> None:
        info = self._worker(worker_id)
        if self.load and self.load.preset.name == report.preset:
            self.load.pending.discard(worker_id)
            if report.error is None:
                self.load.seconds[worker_id] = report.seconds or 0.0
            else:
                self.load.errors[worker_id] = report.error
        info.state = WorkerState.READY
        if report.error is None:
            info.preset = report.preset
        self._notify()

