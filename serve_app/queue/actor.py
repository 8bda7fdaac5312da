"""The singleton job queue: a one-replica Serve deployment wrapping ``core.JobQueue``.

This module is the Serve shell (the replica's state, its wait loop, its health check). What it
does is in plain modules beside it, one mixin each: ``ingress_calls`` (the ingress's face),
``worker_calls`` (the workers' face: hand-out, leases, outcomes), ``endings`` (how jobs end, and the
cleanup pass) and ``durability`` (the job database's writes).

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
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ray import serve

from ..background import Background
from ..config import Settings
from ..logs import use_serve_handlers
from ..metrics import QueueMetrics
from ..webhooks import Notifier
from .cold_start import ColdStart
from .core import JobQueue
from .durability import Durability
from .endings import Endings
from .ingress_calls import IngressCalls, LoadRequest
from .jobstore import StateLock
from .statefolder import StateDamaged, open_checked
from .storage import ResultStore
from .worker_calls import WorkerCalls
from .workers import WorkerRegistry

log = logging.getLogger(__name__)
WORKER_DEPLOYMENT = "ModelWorker"  # the workers' deployment in the same app (deployments.build_app)


# A replaced replica (a redeploy) gets 5 s to answer what it has in flight, not Serve's 20 s: its
# successor waits for it (StateLock), and the long polls it would wait for (workers asking for jobs,
# /edit waits, event streams) are all retried by their callers.
@serve.deployment(num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0},
                  graceful_shutdown_timeout_s=5, graceful_shutdown_wait_loop_s=1)
class QueueActor(IngressCalls, WorkerCalls, Endings, Durability):
    """The Serve shell: the replica's state, its one wait loop, its health check; the calls and
    the rules live in the mixins (each a plain module beside this one)."""

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
        scaling = settings.worker.autoscaling  # workers that follow the queue, maybe down to none
        self.cold_start = ColdStart(scaling.cold_start_seconds) if scaling is not None else None
        self._waking: asyncio.Task | None = None
        self.epoch = uuid.uuid4().hex  # names this replica's versions in the change feed
        self._changed = asyncio.Event()
        self._sched_checked, self._sched_reason = -1e9, None
        self._background = Background(log, "[JobQueue]")  # deadline passes, hand-out commits
        self._cleanup_task = asyncio.get_running_loop().create_task(self._cleanup_loop())
        log.info("[JobQueue] Started - Max size: %d, Cleanup age: %ss - restored %d job(s) from %s",
                 settings.max_queue_size, int(settings.cleanup_age_seconds), self.core.stats()["total_jobs"],
                 own.jobs_db)

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

    def _wake_worker(self) -> None:
        """Ask for a model worker when there is none (autoscaled to zero): a call to the workers'
        deployment that waits for a replica; Serve starts one for it at once (its cold-start path
        for a deployment at zero with a request waiting). One call at a time; a failed one is
        asked again on the next pass."""
        if self._waking is not None and not self._waking.done():
            return

        async def wake():
            context = serve.get_replica_context()
            handle = serve.get_deployment_handle(WORKER_DEPLOYMENT, context.app_name)
            woke = await handle.wake.remote()
            log.info("[JobQueue] Worker %s started for the waiting jobs", woke)

        log.info("[JobQueue] Jobs wait and no model worker is up: asking for one")
        self._waking = self._background.start(wake())

    def check_health(self) -> None:
        if self._cleanup_task.done():
            raise RuntimeError("the queue's cleanup loop stopped")
