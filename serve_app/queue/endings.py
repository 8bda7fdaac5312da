"""How jobs end and what is cleaned up: a job its worker will not finish (run once more, then failed
with a sentence), requeues, the final states' notices (watchers, metrics, webhooks), cancels and
deadlines, and the cleanup pass (expiry, orphaned files, silent workers, the gauges).

A part of ``QueueActor`` (``actor``), as a mixin: plain Python, no Ray; it works on the state the
shell's ``__init__`` sets up (the core, the registry, the stores) on the replica's one event loop.
"""

import asyncio
import logging
import time

from ..contract.protocol import DEFAULT_WEBHOOK_EVENTS, JobStatus
from ..logs import for_job
from .job import Job

log = logging.getLogger(__name__)

CLEANUP_PERIOD_S = 1.0
SWEEP_PERIOD_S = 300.0  # orphaned result files older than the TTL are looked for this often
LOST = "worker lost: the model worker stopped while running this job; submit it again"
MAX_ATTEMPTS = 2  # a job interrupted by a lost worker runs once more, then fails with LOST
LEASE_EXPIRED = ("the model worker made no progress on this job for {seconds:g} seconds (its lease ran out) "
                 "twice; submit it again")


class Endings:
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

    def _sweep_orphans(self, named: set[str], at_start: bool = False) -> None:
        """Result files that are provably orphans (``ResultStore.sweep``): of no job and older than
        the TTL (written just before a crash, or of jobs expired meanwhile), and half-written ones."""
        gone = self.store.sweep(named, time.time() - self.settings.cleanup_age_seconds, all_partials=at_start)
        if gone:
            log.info("[JobQueue] removed %d result file(s) of no job, older than the TTL", len(gone))

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
