"""The queue's face to the ingress replicas (``contract.faces.IngressFace``) and to ``qwen-serve``
(``OperatorFace``): admission and submit (atomic), status, cancel, the long polls (watch, wait, the
mirrors' change feed), results and previews, stats, health, model loads, and the graceful drain.
Every call names its caller, so a station only ever reaches its own jobs.

A part of ``QueueActor`` (``actor``), as a mixin: plain Python, no Ray; it works on the state the
shell's ``__init__`` sets up (the core, the registry, the stores) on the replica's one event loop.
"""

import asyncio
import functools
import logging
from dataclasses import dataclass, field

from ..auth import Caller, job_priority
from ..contract.protocol import Changes, JobRequest, JobStatus, JobView, WorkerState
from ..errors import (ApiError, LoadInProgress, NoModelLoaded, PresetUnavailable, PreviewNotReady, QueueFull,
                      ResultNotReady, ServiceUnavailable, StartTooLate, StationLimit)
from ..logs import for_job
from ..presets import Preset, require_available, resolve

log = logging.getLogger(__name__)


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


class IngressCalls:
    def resolve_preset(self, name: str | None) -> Preset:
        if name is None:
            if self.default_preset is None:
                raise NoModelLoaded()
            name = self.default_preset
        preset = resolve(self.presets, name)
        self._require_runnable(preset)
        return preset

    def _require_runnable(self, preset: Preset) -> None:
        """Its weights are here (``require_available``) and some worker can use them."""
        require_available(preset)
        refused = self.registry.refusal(preset.name)
        if refused:
            raise PresetUnavailable(refused)

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
        self._follow_workers()  # with no worker up (autoscaled to zero), one is asked for now
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
        warnings += list(self.registry.refusals().values())  # each a sentence naming its preset
        if self.stopping:
            warnings.append("The server is stopping: running jobs finish, queued and new jobs wait "
                            "for the next start.")
        return {
            "warnings": warnings,
            "refused": self.registry.refusals(),  # preset -> why: the ingress says "degraded" (not a field)
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
            "autoscaling": self._scaling_view(len(workers)),
        }

    def _scaling_view(self, alive: int) -> dict | None:
        """Health's ``autoscaling``: the bounds, the workers up, whether one is being started for
        waiting jobs, and the start times measured (None with a fixed number of workers)."""
        scaling = self.settings.worker.autoscaling
        if scaling is None:
            return None
        return {"min_workers": scaling.min_workers, "max_workers": scaling.max_workers, "workers": alive,
                "starting": self.cold_start.waiting, "expected_start_seconds": round(self.cold_start.expected_s, 1),
                "measured_start_seconds": self.cold_start.measured[-5:]}

    @answers
    async def load_model(self, name: str) -> dict:
        preset = resolve(self.presets, name)
        self._require_runnable(preset)
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
