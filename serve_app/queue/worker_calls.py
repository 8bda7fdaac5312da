"""The queue's face to its model workers (``contract.faces.WorkerFace``): liveness and leases, the
hand-out of jobs and loads (a long poll; a busy worker's claim ahead), inputs, progress, previews,
cancel signals, and outcomes. A report of a job that is no longer the worker's answers ``not yours``.

A part of ``QueueActor`` (``actor``), as a mixin: plain Python, no Ray; it works on the state the
shell's ``__init__`` sets up (the core, the registry, the stores) on the replica's one event loop.
"""

import asyncio
import logging
import time

from ..contract.protocol import (JobDone, JobFailed, JobTask, LoadDone, LoadTask, Outcome, PreviewReport, StepReport,
                                 WorkerState)
from ..logs import for_job
from .endings import LEASE_EXPIRED, LOST
from .job import Job
from .storage import result_name, storage_reason
from .workers import WorkerInfo

log = logging.getLogger(__name__)


class WorkerCalls:
    def _alive_workers(self) -> list[WorkerInfo]:
        return self.registry.alive()

    def _usable_workers(self) -> list[WorkerInfo]:
        return self.registry.usable()

    def _count_slots(self) -> None:
        """The core's ETAs count one slot per usable worker (one at least) after a worker joins,
        leaves or goes silent."""
        self.core.worker_slots = max(1, len(self._usable_workers()))

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
        self._count_slots()
        if self.load:
            self.load.pending &= alive
        self._follow_workers()
        self.metrics.workers(len(alive))

    def _follow_workers(self) -> None:
        """(Autoscaling.) While jobs wait and no worker is ready, their status says a worker is
        starting and when it should be ready (``cold_start``); with no worker at all, one is asked
        for (``_wake_worker``: Serve starts a replica for a call that waits for one)."""
        if self.cold_start is None:
            return
        ready = [w for w in self._usable_workers() if w.state not in (WorkerState.STARTING, WorkerState.LOADING)]
        expected = self.cold_start.update(bool(self.core.order()), bool(ready))
        self.core.worker_starting(expected)
        if expected is not None and not self._alive_workers() and not self.stopping:
            self._wake_worker()

    async def scaling_figures(self) -> dict[str, int]:
        """What each worker reports to Serve's autoscaler (``worker.scaling``): jobs queued, jobs
        running."""
        return {"queued": len(self.core.order()), "running": len(self.core.running())}

    async def worker_left(self, worker_id: str) -> list[str]:
        """A worker's replica is stopping (scaled down, redeployed) and has finished what it could:
        the jobs it still holds are queued again without charging an attempt (as the graceful stop
        does: no fault of theirs), it is forgotten, and nothing is handed to it again. Answers the
        ids queued again."""
        held = [job for job in self.core.running() if job.worker_id == worker_id]
        self.registry.leave(worker_id)
        self._waiting.pop(worker_id, None)
        for job in held:
            await self._requeue(job, charge=False)
            log.info("[JobQueue] Job %s queued again: its worker %s is stopping", job.id[:8], worker_id,
                     extra=for_job(job.id))
        log.info("[JobQueue] Worker %s left", worker_id)
        self._count_slots()
        self._follow_workers()
        self._notify()
        return [job.id for job in held]

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
        if self.cold_start is not None and not self.cold_start.overdue():
            return None  # autoscaling: none is up by design, and the cluster's autoscaler may add a node
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

    def _worker(self, worker_id: str) -> WorkerInfo:
        info, new = self.registry.seen(worker_id)
        if new:
            self._count_slots()
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
        if self.registry.has_left(worker_id):  # (a long poll sent before its worker said it leaves)
            return None
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
            if self.registry.has_left(worker_id):
                return None
            self._follow_workers()  # a worker ready: a cold start (if one was waited for) ends here
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
        self.core.complete(job_id, name, run_seconds, report.full_steps)
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
