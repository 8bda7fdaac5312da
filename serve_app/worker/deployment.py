"""The model worker: a Serve deployment whose replicas each hold one pipeline (one GPU when pinned).

Each replica pulls work from the queue actor in a loop: one job at a time, in FIFO order, with the
preset the job names (switching when the previous job used another). Inference runs in a thread so
the replica stays responsive to Serve's health checks. A job that raises is reported as ``failed``
with a one-line reason and the replica carries on with the next job.

The next job is claimed ahead: when a job starts its last denoising step, the replica asks the queue
for its next job at once, so that round trip overlaps the step instead of following it (the job is
``processing`` from then on). The queue answers such a claim only when no idle worker is waiting,
so a job never waits for a busy worker while another one could start it now.
Keeping the GPU busy (``worker.prepare_ahead``, on by default on a GPU): the job claimed ahead is
also prepared in another thread (uploads decoded, the prompt encoded on a side CUDA stream) while
the GPU finishes; the next job then starts on the GPU without waiting for that CPU work. The PNG of
the finished job is encoded meanwhile too. On a CPU the claim alone is made: preparing beside the
last step would only compete with it for the same cores (BENCHMARKS.md).

Progress: after every denoising step the pipeline's callback sends the step to the queue without
waiting for an answer (a station's progress never costs the GPU a round trip). Cancel: while a job
runs, the replica keeps a long poll open on the queue (``cancel_signal``); when it answers, the step
callback raises ``JobCancelled`` at the end of the current step and the replica asks for the next job.

What the replica tells the queue (its state, heartbeats, progress, previews, outcomes delivered until
answered) and the ledger its leases are renewed by are ``reports.Reports``.

Replicas: ``worker.num_replicas`` in config/serve.yaml, or ``worker.autoscaling`` (Serve's
autoscaler over the queue's figures, which each replica reports: ``record_autoscaling_stats``,
``scaling``); GPU pinning: ``worker.num_gpus`` (1 on a GPU machine). Scaling out needs nothing
else: more replicas simply pull more jobs. A replica Serve stops (scaled down, redeployed) takes no
new job, finishes the one it runs within ``graceful_stop_seconds``, and hands back to the queue,
uncharged, whatever it still holds (``__del__``).
"""

import asyncio
import logging
import pkgutil
import threading
import time
import uuid

from ray import serve
from ray.serve.handle import DeploymentHandle

from ..background import Background
from ..config import Settings
from ..contract import transfer
from ..contract.protocol import JobDone, JobFailed, JobTask, LoadDone, LoadTask, WorkerState
from ..contract.queue_client import WorkerQueue
from ..image_checks import CheckerUnavailable, ImageCheck
from ..logs import for_job, use_serve_handlers
from ..metrics import PolicyMetrics, WorkerMetrics
from ..presets import missing_weights
from . import provenance
from .engine import JobCancelled, ProfileUnavailable, public_error
from .reports import Reports
from .scaling import BUSY, QUEUED, RUNNING

log = logging.getLogger(__name__)
POLL_S = 5.0


@serve.deployment(max_ongoing_requests=8)
class ModelWorker:
    async def __init__(self, queue: DeploymentHandle, app_settings: Settings):
        use_serve_handlers()
        self.queue = WorkerQueue(queue, app_settings.internal_calls == "grpc")  # per method: gRPC or Ray calls
        settings = app_settings.worker
        try:
            self.id = serve.get_replica_context().replica_id.unique_id
        except Exception:
            self.id = uuid.uuid4().hex[:12]
        engine = pkgutil.resolve_name(settings.engine)  # EditEngine, or a named fake in fault tests
        self.engine = engine(settings.models_dir, settings.device, settings.torch_threads,
                             settings.png_compress_level, settings.attention_backend, settings.compile,
                             settings.profile, settings.gpu_memory_gib)
        self._background = Background(log, "[ModelWorker]")  # reports sent without waiting, encodings
        self.reports = Reports(self.queue, self.id, app_settings.job_lease_seconds, self._background)
        # The next job, claimed and being prepared while the current one finishes (prepare_ahead).
        self._ahead: asyncio.Task | None = None
        self.prepare_ahead = (settings.prepare_ahead if settings.prepare_ahead is not None
                              else self.engine.device == "cuda")
        self.grace_s = app_settings.queue.graceful_stop_seconds
        self.leaving = False  # Serve is stopping this replica (__del__): no new job
        self._current: str | None = None  # the job being generated now
        self.jobs_done = 0
        self.jobs_claimed_ahead = 0  # claimed on a previous job's last step
        self.jobs_prepared_ahead = 0  # of those, prepared meanwhile (prepare_ahead)
        self.inputs_refetched = 0  # jobs whose decoded images were gone: their upload was decoded here
        self.metrics = WorkerMetrics()
        self.engine.on_load = self.metrics.loaded
        loop = asyncio.get_running_loop()
        self._heartbeat_task = loop.create_task(self._heartbeat())  # also during a long preload
        self._loop_task: asyncio.Task | None = None
        self.running: dict | None = None  # what each preset runs here (provenance), once the profile is known
        self.refused: dict[str, str] = {}  # preset -> why its files cannot run here (engine.refused_files)
        self.policy_metrics = PolicyMetrics()
        policy = app_settings.output_policy
        self.output_check = ImageCheck(policy) if policy is not None else None
        await self._report(WorkerState.STARTING)
        try:
            plan = [app_settings.presets[name] for name in settings.plan_presets]
            await asyncio.to_thread(self.engine.choose_profile, plan, app_settings.max_images)
            if self.output_check is not None:  # a result is never stored unchecked: no checker, no jobs
                await asyncio.to_thread(self.output_check.load)
            self.running = await asyncio.to_thread(self._describe, app_settings.presets)
            # Files that cannot work are found now: health says so and the queue refuses their jobs.
            self.refused = await asyncio.to_thread(self.engine.refused_files, list(app_settings.presets.values()))
            for why in self.refused.values():
                log.error("[ModelWorker] %s", why)
        except (ProfileUnavailable, CheckerUnavailable) as exc:
            # Stay up (a replica that raised would be restarted into the same error, for ever), say
            # why in /health, and take no job: the queue hands jobs only to workers that ask.
            log.error("[ModelWorker] cannot run: %s", exc)
            await self._report(WorkerState.UNUSABLE, None, str(exc))
            return
        if settings.preload is not None and settings.preload not in self.refused:
            preload = app_settings.presets[settings.preload]
            await self._report(WorkerState.LOADING, preload.name)
            try:
                await asyncio.to_thread(self.engine.ensure, preload)
                if settings.warmup:  # compile / autotune now, not on a station's first job
                    await asyncio.to_thread(self._warm_up, preload)
            except Exception as exc:
                log.exception("[ModelWorker] preloading %s failed", preload.name)
                await self._report(WorkerState.FAILED, None, public_error(exc))
        self._loop_task = loop.create_task(self._loop())

    def _describe(self, presets: dict) -> dict:
        """(A thread.) What each preset whose weights are here runs (``provenance``), each logged once."""
        versions = provenance.libraries()
        described = {}
        for name, preset in presets.items():
            missing = missing_weights(preset)
            if missing is not None:
                log.info("[ModelWorker] preset %s: its weights are not here (%s)", name, missing)
                continue
            try:
                found = provenance.describe(preset, self.engine.local_base(preset),
                                            self.engine.profile_for(preset).name)
            except Exception as exc:  # an unreadable file is the load's error to report, not the start's
                log.warning("[ModelWorker] preset %s: could not describe its files (%s)", name, type(exc).__name__)
                continue
            log.info("[ModelWorker] %s", provenance.log_line(name, found, versions))
            described[name] = provenance.public(found)
        return {"libraries": versions, "presets": described}

    async def _report(self, state: WorkerState, preset: str | None = None, detail: str | None = None) -> None:
        import ray

        placement = {"device": self.engine.device, "profile": self.engine.profile and self.engine.profile.name,
                     "profile_reason": self.engine.profile_reason, "running": self.running,
                     "refused": self.refused or None}
        if ray.is_initialized():  # (outside Ray, as in bench/load.py's plain server, asking would start it)
            placement.update(gpu_ids=[int(g) for g in ray.get_gpu_ids()],
                             node=ray.get_runtime_context().get_node_id()[:12])
        await self.reports.state(state, preset, detail, placement)

    @property
    def _preset_name(self) -> str | None:
        return self.engine.preset.name if self.engine.preset else None

    async def _heartbeat(self) -> None:
        """Tell the queue this replica is alive, also while a job runs (inference is in a thread)."""
        while True:
            await self.reports.heartbeat(self.engine.loading)
            try:
                self.metrics.sample_memory(self.engine.device)
            except Exception:  # metrics must never stop the heartbeat
                log.debug("[ModelWorker] GPU memory sample failed")
            await asyncio.sleep(self.reports.heartbeat_s)

    async def _loop(self) -> None:
        if self.engine.preset is not None:
            await self._report(WorkerState.READY, self._preset_name)
        # (A job received after ``leaving`` is set stays this worker's until it tells the queue it
        # leaves, which queues it again: __del__.)
        while not self.leaving:
            if self._ahead is not None:
                task, prepared = await self._ahead
                self._ahead = None
                if task is not None and not self.leaving:
                    await self._run(task, prepared)
                continue
            try:
                task = await self.queue.next_task(self.id, self._preset_name, POLL_S)
            except Exception:
                log.warning("[ModelWorker] queue unreachable; retrying in 1s")
                await asyncio.sleep(1.0)
                continue
            if self.leaving:
                break
            if isinstance(task, LoadTask):
                await self._load(task)
            elif isinstance(task, JobTask):
                await self._run(task)

    def _claim_ahead(self) -> None:
        """(On the event loop.) Start claiming (and with prepare_ahead, preparing) the next job, once
        per running job (none once the replica is leaving)."""
        if self._ahead is None and not self.leaving:
            self._ahead = asyncio.get_running_loop().create_task(self._fetch_ahead())

    async def _fetch_ahead(self):
        """(the next job or None, its Prepared or None): a job claimed while this one finishes."""
        try:
            task = await self.queue.next_task(self.id, self._preset_name, 0.0, True)
        except Exception:
            return None, None
        if not isinstance(task, JobTask):
            return None, None
        self.reports.touch(task.job_id)
        self.jobs_claimed_ahead += 1
        if not self.prepare_ahead:
            return task, None
        self.jobs_prepared_ahead += 1
        try:
            prepared = await asyncio.to_thread(self.engine.prepare, task.preset, await self._uploads(task),
                                               task.instruction, task.system_prompt)
        except Exception:  # generate does the work again and reports what is wrong with the job
            log.warning("[ModelWorker] preparing job %s ahead failed", task.job_id[:8], exc_info=True,
                        extra=for_job(task.job_id))
            prepared = None
        return task, prepared

    async def _uploads(self, task: JobTask) -> list:
        """The job's images: the pixels the ingress decoded (from Ray's object store), or the
        uploaded bytes (to decode) when it sent none or they are gone with the replica that sent
        them. Raises ``JobCancelled`` when the job is no longer this worker's."""
        if task.pixels is None:
            return task.images
        try:
            return await transfer.fetch(task.pixels)
        except Exception as exc:
            log.warning("[ModelWorker] job %s: its decoded images are gone (%s); decoding its upload instead",
                        task.job_id[:8], type(exc).__name__, extra=for_job(task.job_id))
        self.inputs_refetched += 1
        images = await self.reports.deliver(self.queue.inputs, self.id, task.job_id)
        if images is None:  # cancelled or declared lost meanwhile
            raise JobCancelled(task.job_id)
        return images

    async def _load(self, task: LoadTask) -> None:
        try:
            seconds = await asyncio.to_thread(self.engine.ensure, task.preset)
            error = None
        except Exception as exc:
            log.exception("[ModelWorker] loading %s failed", task.preset.name)
            seconds, error = None, public_error(exc)
        await self.reports.deliver(self.queue.load_done, self.id, LoadDone(task.preset.name, seconds, error))

    def _warm_up(self, preset) -> None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        side = min(preset.resolution, 1024)
        Image.new("RGB", (side, side), (128, 128, 128)).save(buf, "PNG")
        start = time.perf_counter()
        self.engine.run(preset, [buf.getvalue()], "warm up", seed=0)
        log.info("[ModelWorker] warm-up edit with %s took %.2fs", preset.name, time.perf_counter() - start)

    def _step_reporter(self, task: JobTask, cancelled: threading.Event):
        """The step callback (runs in the inference thread): report progress, stop if cancelled."""
        loop = asyncio.get_running_loop()
        last = [None]

        def on_step(step: int, total: int) -> None:
            self.reports.touch(task.job_id)
            now = time.perf_counter()
            # The first step's time would include text and image encoding: measured from step 2.
            took = None if last[0] is None else now - last[0]
            last[0] = now
            if took is not None:
                self.metrics.stepped(task.preset.name, took)
            loop.call_soon_threadsafe(self.reports.progress, task.job_id, step, total, took)
            if step == max(1, total - 1):  # the last step begins: get the next job ready meanwhile
                loop.call_soon_threadsafe(self._claim_ahead)
            if cancelled.is_set():
                raise JobCancelled(task.job_id)

        return on_step

    def _preview_sender(self, job_id: str):
        """The engine's ``on_preview`` (called in the inference thread): the JPEG goes to the queue
        from the event loop, without waiting for the answer."""
        loop = asyncio.get_running_loop()

        def on_preview(step: int, jpeg: bytes) -> None:
            loop.call_soon_threadsafe(self.reports.preview, job_id, step, jpeg)

        return on_preview

    async def _run(self, task: JobTask, prepared=None) -> None:
        """One job, with ``_current`` naming it until its result is encoded (a replica that is
        stopping waits for that: ``__del__``)."""
        self._current = task.job_id
        try:
            await self._generate(task, prepared)
        finally:
            self._current = None

    async def _generate(self, task: JobTask, prepared=None) -> None:
        """Generate on the device; on a GPU, hand PNG encoding and the report to a background task so
        the next job's generation starts at once (encoding is CPU work, off the GPU's path)."""
        start = time.perf_counter()
        self.reports.touch(task.job_id)
        cancelled = threading.Event()
        listener = asyncio.get_running_loop().create_task(self.reports.listen_for_cancel(task.job_id, cancelled))
        try:
            # Only a job that asked for previews passes on_preview: the others compute none of it.
            extra = {"on_preview": self._preview_sender(task.job_id)} if task.previews else {}
            uploads = None if prepared is not None else await self._uploads(task)
            image = await asyncio.to_thread(self.engine.generate, task.preset, uploads, task.instruction,
                                            task.seed, task.system_prompt, self._step_reporter(task, cancelled),
                                            prepared, **extra)
        except JobCancelled:
            log.info("[ModelWorker] job %s stopped: cancelled after %.2fs", task.job_id[:8],
                     time.perf_counter() - start, extra=for_job(task.job_id))
            self.reports.active.pop(task.job_id, None)
            return
        except Exception as exc:
            log.exception("[ModelWorker] job %s raised", task.job_id[:8], extra=for_job(task.job_id))
            await self.reports.outcome(JobFailed(task.job_id, public_error(exc), time.perf_counter() - start))
            return
        finally:
            listener.cancel()
        full_steps = self.engine.full_steps  # read before the next job's generate replaces it
        self.reports.touch(task.job_id)
        if self.engine.device == "cpu":
            # No accelerator to keep busy: encoding beside the next job would only compete for the
            # cores, so it is done now. The report (a wait on the queue storing the file) is not.
            report = await self._encode(task, image, start, full_steps)
            self._background.start(self.reports.outcome(report))
            return
        self._background.start(self._finish(task, image, start, full_steps))

    def _checked_png(self, image) -> tuple[bytes | None, str | None]:
        """(A thread.) (the PNG, None), or (None, why it is withheld) when the output check says so."""
        if self.output_check is not None:
            import numpy as np

            withheld = self.output_check.withheld(np.asarray(image.convert("RGB")))
            if withheld:
                return None, withheld
        return self.engine.encode(image), None

    async def _encode(self, task: JobTask, image, start: float, full_steps: int | None = None) -> JobDone | JobFailed:
        try:
            png, withheld = await asyncio.to_thread(self._checked_png, image)
        except Exception as exc:
            return JobFailed(task.job_id, public_error(exc), time.perf_counter() - start)
        if withheld:  # failed, with the labels found: nothing of the picture leaves this replica
            self.policy_metrics.refused("output")
            log.warning("[ModelWorker] job %s: %s", task.job_id[:8], withheld, extra=for_job(task.job_id))
            return JobFailed(task.job_id, withheld, time.perf_counter() - start)
        self.jobs_done += 1
        return JobDone(task.job_id, png, time.perf_counter() - start, full_steps)

    async def _finish(self, task: JobTask, image, start: float, full_steps: int | None) -> None:
        await self.reports.outcome(await self._encode(task, image, start, full_steps))

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """(Serve calls it with ``worker.autoscaling``.) The queue's figures for the autoscaling
        policy (``scaling.QueueDepthPolicy``): jobs queued and running, and whether this replica
        holds a job. Without the queue's answer only the last, so the policy holds its target."""
        own = {BUSY: float(self._current is not None)}
        try:
            figures = await asyncio.wait_for(self.queue.scaling_figures(), 5.0)
        except Exception:
            return own
        return {QUEUED: float(figures["queued"]), RUNNING: float(figures["running"]), **own}

    async def wake(self) -> str:
        """The queue's call when jobs wait and no worker is up: it waits for a replica, so Serve
        starts one (autoscaled to zero); answers this replica's id once it is constructed."""
        return self.id

    async def __del__(self):
        """Serve stops this replica (scaled down, redeployed, the app deleted): take no new job,
        let the running one finish (within ``graceful_stop_seconds``; Serve's
        ``graceful_shutdown_timeout_s`` is longer), then tell the queue this worker leaves, which
        queues again, uncharged, any job it still holds (one claimed meanwhile, or one that did
        not finish in time). A hung job (no progress for its lease) is not waited for nor handed
        back: its lease fails it as before, so a job that hangs every worker does not run for ever."""
        self.leaving = True
        if self.reports.stuck(self.engine.loading):
            return
        deadline = time.monotonic() + self.grace_s
        while (self._current is not None or len(self._background)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # (the outcome's report is background work: delivered first)
        for task in (self._loop_task, self._heartbeat_task, self._ahead):
            if task is not None:
                task.cancel()
        try:
            handed_back = await asyncio.wait_for(self.queue.worker_left(self.id), 5.0)
        except Exception:  # the queue is gone too (the app deleted): its restart restores the jobs
            log.info("[ModelWorker] stopping; the queue did not answer", exc_info=True)
            return
        log.info("[ModelWorker] stopping; %s", f"job(s) {', '.join(j[:8] for j in handed_back)} queued again"
                 if handed_back else "no job left unfinished")

    def check_health(self) -> None:
        """Raising asks Serve to replace this replica: its loop stopped, or a job made no progress for
        longer than the lease (a pipeline hung inside a CUDA call or a report that never returns:
        the thread cannot be interrupted, the process can)."""
        if (self._loop_task is not None and self._loop_task.done()) or self._heartbeat_task.done():
            raise RuntimeError("the worker's job loop stopped")
        stuck = self.reports.stuck(self.engine.loading)
        if stuck:
            raise RuntimeError(f"no progress on job {stuck[0][:8]} for more than {self.reports.lease_s:g}s")

    def info(self) -> dict:
        """Which device and preset this replica has (used by tests and operators)."""
        import ray

        return {"id": self.id, "device": self.engine.device, "preset": self._preset_name,
                "gpu_ids": ray.get_gpu_ids(), "jobs_done": self.jobs_done,
                "jobs_claimed_ahead": self.jobs_claimed_ahead, "jobs_prepared_ahead": self.jobs_prepared_ahead,
                "inputs_refetched": self.inputs_refetched,
                "internal_calls": self.queue.transport,
                "attention_backend": self.engine.attention_backend,
                "profile": self.engine.profile and self.engine.profile.name,
                "node_id": ray.get_runtime_context().get_node_id()}
