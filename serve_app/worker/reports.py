"""What a model worker tells the queue (``contract.faces.WorkerFace``), and the ledger its leases are
renewed by. No Ray import: the queue arrives as a ``WorkerQueue``.

Guarantees:
- An outcome, a load's end, or a request for a job's stored inputs is delivered until the queue
  answers (``deliver``): any answer is an acknowledgement, ``not yours`` included. While the queue is
  away the report waits with backoff (up to ``REPORT_BACKOFF_MAX_S``); it is never dropped, and
  trying counts as progress on the job, so its lease holds meanwhile.
- Progress and previews go without waiting (``progress``, ``preview``); one lost is not retried (the
  next one, or the outcome, supersedes it).
- A heartbeat names the jobs this replica made progress on within the lease, or all it holds while
  a model load runs (``working_on``); a job it stops naming runs out of lease at the queue.
"""

import asyncio
import logging
import threading
import time

from ..background import Background
from ..contract.protocol import JobDone, JobFailed, Outcome, PreviewReport, StepReport, WorkerState, heartbeat_every
from ..contract.queue_client import WorkerQueue
from ..logs import for_job

log = logging.getLogger(__name__)
REPORT_BACKOFF_MAX_S = 10.0


class Reports:
    def __init__(self, queue: WorkerQueue, worker_id: str, lease_s: float, background: Background):
        self.queue, self.id = queue, worker_id
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_every(lease_s)
        self.background = background
        # Job id -> when this replica last made progress on it (claimed, a step, finished, a report
        # tried). Heartbeats name the jobs with progress within the lease; a job without is stuck.
        self.active: dict[str, float] = {}

    # --- the ledger -------------------------------------------------------------------------------

    def touch(self, job_id: str) -> None:
        self.active[job_id] = time.monotonic()

    def working_on(self, loading: bool) -> list[str]:
        """The jobs with progress within the lease (every one while a load runs: a load is progress)."""
        now = time.monotonic()
        return [j for j, t in list(self.active.items()) if now - t < self.lease_s or loading]

    def stuck(self, loading: bool) -> list[str]:
        working = self.working_on(loading)
        return [j for j in list(self.active) if j not in working]

    # --- the reports ------------------------------------------------------------------------------

    async def state(self, state: WorkerState, preset: str | None, detail: str | None, placement: dict) -> None:
        try:
            await self.queue.worker_state(self.id, state.value, preset, detail, placement)
        except Exception:
            log.warning("[ModelWorker] could not report state %s to the queue", state)

    async def heartbeat(self, loading: bool) -> None:
        try:
            await self.queue.heartbeat(self.id, self.working_on(loading))
        except Exception:
            log.warning("[ModelWorker] heartbeat to the queue failed")

    def progress(self, job_id: str, step: int, total: int, took: float | None) -> None:
        self._send(self.queue.progress, StepReport(job_id, step, total, took))

    def preview(self, job_id: str, step: int, jpeg: bytes) -> None:
        self._send(self.queue.preview, PreviewReport(job_id, step, jpeg))

    def _send(self, call, report) -> None:
        async def send():
            try:
                await call(self.id, report)
            except Exception:
                log.debug("[ModelWorker] %s report for %s lost", call.__name__, report.job_id[:8])

        self.background.start(send())

    async def listen_for_cancel(self, job_id: str, cancelled: threading.Event) -> None:
        """Set ``cancelled`` once the queue says the job is no longer this worker's."""
        while not cancelled.is_set():
            try:
                if await self.queue.cancel_signal(self.id, job_id, 30.0):
                    cancelled.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)

    async def outcome(self, report: JobDone | JobFailed) -> None:
        """A job's outcome, delivered; the job is no longer this replica's after."""
        job_id = report.job_id
        self.touch(job_id)
        call = self.queue.job_done if isinstance(report, JobDone) else self.queue.job_failed
        try:
            answer = await self.deliver(call, self.id, report, touch=job_id)
            if answer == Outcome.NOT_YOURS:
                log.info("[ModelWorker] job %s was no longer ours (cancelled or run elsewhere)", job_id[:8],
                         extra=for_job(job_id))
        finally:
            self.active.pop(job_id, None)

    async def deliver(self, call, *args, touch: str | None = None):
        """``call(*args)`` until the queue answers (see the module's guarantees); its answer."""
        attempt = 0
        while True:
            try:
                answer = await call(*args)
                if attempt:
                    log.info("[ModelWorker] %s delivered after %d retries: %s", call.__name__, attempt, answer)
                return answer
            except Exception as exc:
                attempt += 1
                if touch:  # trying to deliver is progress: the job's lease holds meanwhile
                    self.touch(touch)
                delay = min(REPORT_BACKOFF_MAX_S, 0.5 * 2 ** min(attempt, 6))
                log.warning("[ModelWorker] %s not delivered (attempt %d: %s); again in %.1fs", call.__name__,
                            attempt, type(exc).__name__, delay)
                await asyncio.sleep(delay)
