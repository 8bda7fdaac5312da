"""What the HTTP routes do, with no HTTP in it: one ``EditService`` per ingress replica.

It checks a station's edit (``forms``), calls the queue (``IngressQueue``: each call typed, with a time
limit, a refusal raised as the ``ApiError`` it is), answers status, queue stats, health and the events
streams from this replica's mirror of the queue when it can (``mirror``: no queue hop), follows jobs
for the events stream (``events``), and cancels the job of an /edit whose client went away. The
routes (``routes``) only translate between HTTP and these methods. No FastAPI and no Ray import: the
queue is injected, an ``IngressQueue`` over Serve's handle (or, in ``bench/load.py plain``, over the
queue object itself).
"""

import asyncio
import contextvars
import logging
import uuid
from collections.abc import AsyncIterator

from ..auth import Caller, job_priority
from ..background import Background
from ..config import Settings
from ..contract import transfer
from ..contract.protocol import JobRequest, JobStatus, JobView, WorkerState
from ..contract.queue_client import QUICK_CALL_S, IngressQueue
from ..errors import ApiError, EditTimeout, JobNotFound, ServiceUnavailable
from ..image_checks import ImageCheck, ImageRefused
from ..images import check_and_decode
from ..logs import for_job
from ..metrics import PolicyMetrics
from ..presets import missing_weights
from ..prompts import PromptRefused
from .events import JobEvents
from .forms import EditFields, check_edit, check_idempotency_key, fingerprint
from .mirror import Mirror

log = logging.getLogger(__name__)
HEARTBEAT_S = 10.0  # the events stream sends a comment at least this often when nothing changes
FEED = Caller("ingress-events", admin=True)  # the shared per-job feed; each listener was checked first


class EditService:
    def __init__(self, queue: IngressQueue, settings: Settings):
        self.queue = queue
        self.settings = settings
        self.events = JobEvents(self._watch, HEARTBEAT_S)
        self.mirror = Mirror(self.queue.changes, settings.cleanup_age_seconds)
        policy = settings.output_policy
        self.upload_check = ImageCheck(policy) if policy is not None and policy.uploads else None
        self.policy_metrics = PolicyMetrics()
        self._background = Background(log, "[Ingress]")  # cancels for abandoned /edits

    async def _watch(self, job_id: str, last: tuple | None, timeout: float) -> JobView | None:
        """The job's view once its signature differs from ``last``, None after ``timeout``: from the
        mirror while it knows the job, else the queue's own long poll (which raises when the job is gone)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            view = self.mirror.job(job_id, FEED)
            left = deadline - loop.time()
            if view is None and self.mirror.catching_up and left > 0:
                await self.mirror.changed(left)  # (a write of this replica: the feed brings it in a moment)
                continue
            if view is None:
                return await self.queue.watch(job_id, FEED, last, max(left, 0))
            if last is None or view.signature() != tuple(last):
                return view
            if left <= 0:
                return None
            await self.mirror.changed(left)

    # --- jobs --------------------------------------------------------------------------------------

    async def submit(self, form: EditFields, caller: Caller, idempotency_key: str | None,
                     job_id: str | None = None) -> tuple[JobView, bool]:
        """(the job's view, created now); an idempotent retry gets the earlier job and False."""
        idempotency_key = check_idempotency_key(idempotency_key)
        try:
            checked = check_edit(form, self.settings)
        except PromptRefused as exc:
            self._refused("prompt", caller, exc.terms)
            raise
        priority = job_priority(checked.priority, caller)
        data = [await f.read() for f in form.images]
        key_of = None if idempotency_key is None else fingerprint(data, form, checked)
        self.mirror.start()
        if not self.mirror.has_room(caller.station, self.settings.queue.max_jobs_per_station):
            # Full, or the mirror cannot tell: ask the queue before decoding (a refusal costs no decode;
            # a keyed retry gets its job whatever the occupancy). With room, the submit is the one call.
            existing = await self.queue.admit(caller, idempotency_key, key_of)
            if existing is not None:
                return existing, False
        try:
            pixels = await asyncio.to_thread(self._decode, data)
        except ImageRefused as exc:
            self._refused("upload", caller, exc.labels)
            raise
        request = JobRequest(job_id or str(uuid.uuid4()), data, checked.instruction, checked.seed, checked.preset,
                             checked.system_prompt, idempotency_key, key_of, checked.webhook_url,
                             checked.webhook_events, checked.start_within_seconds, checked.deadline_seconds,
                             priority, checked.previews, pixels)
        view, created = await self.queue.submit(request, caller)
        self.mirror.note(view)  # read your writes: this replica's next status read shows the job
        return view, created

    def _refused(self, check: str, caller: Caller, found: list[str]) -> None:
        """A policy refusal, counted and logged with the station (never with its key)."""
        self.policy_metrics.refused(check)
        log.info("[Ingress] %s refused for station %s: %s", check, caller.station, ", ".join(found))

    def _decode(self, data: list[bytes]):
        """(A thread.) Check each upload; the pixels each check decoded are the job's input, shared
        once (``transfer``): the worker does not decode the upload again."""
        limits = self.settings.ingress.upload_limits
        pixels = [check_and_decode(one, limits)[1] for one in data]
        if self.upload_check is not None:
            for one in pixels:
                self.upload_check.check_upload(one)
        return transfer.share(pixels, sum(p.nbytes for p in pixels))

    async def edit(self, form: EditFields, caller: Caller, idempotency_key: str | None) -> JobView:
        """Submit and wait up to ``edit_timeout_seconds`` for the job to complete. Raises
        ``ServiceUnavailable`` when it failed and ``EditTimeout`` when it is still running; both name
        the job in an ``X-Job-Id`` header. Cancelled (the request's client went away), it cancels
        the job."""
        job_id = str(uuid.uuid4())  # known before the queue is called, so a disconnect can name it
        timeout = self.settings.ingress.edit_timeout_seconds

        async def submit_and_wait() -> JobView:
            nonlocal job_id
            view, _ = await self.submit(form, caller, idempotency_key, job_id)
            job_id = view.job_id  # an idempotent retry's earlier job
            return await self.queue.wait(job_id, timeout, caller)

        # Shielded: when Serve cancels this request (its client went away) the cancel below starts at
        # once. Cancelling a queue call in flight waits for Ray to confirm it, which can take until
        # the call would have returned: the job's end.
        work = asyncio.ensure_future(submit_and_wait())
        try:
            view = await asyncio.shield(work)
        except asyncio.CancelledError:  # possibly while the submit is still on its way to the queue
            work.cancel()
            # A fresh context: in the request's own, Serve treats the cancel call as part of the
            # cancelled request and may cancel it too.
            self._background.start(self._cancel_abandoned(job_id, caller), context=contextvars.Context())
            raise
        headers = {"X-Job-Id": job_id}
        if view.status is JobStatus.FAILED:
            raise ServiceUnavailable(f"The edit failed: {view.error}", headers)
        if view.status is not JobStatus.COMPLETED:
            raise EditTimeout(f"The edit is still {view.status} after {timeout:g}s; "
                              f"poll /api/v1/status/{job_id} for it.", headers)
        return view

    async def _cancel_abandoned(self, job_id: str, caller: Caller) -> None:
        """Cancel the job of an /edit whose client went away, until the queue answers: cancelled,
        finished meanwhile (409), or still unknown after a few seconds (its submit never reached the
        queue). While the queue is away (a restart) the cancel waits with backoff, for up to
        ``edit_timeout_seconds``, rather than letting an abandoned job run."""
        loop = asyncio.get_running_loop()
        deadline, unknown, delay = loop.time() + self.settings.ingress.edit_timeout_seconds, 0, 0.5
        while True:
            try:
                await self.cancel(job_id, caller)
                log.info("[Ingress] /edit client went away: job %s cancelled", job_id[:8], extra=for_job(job_id))
                return
            except JobNotFound:
                unknown += 1
                if unknown >= 10:
                    log.info("[Ingress] /edit client went away before its job %s was queued", job_id[:8],
                             extra=for_job(job_id))
                    return
                await asyncio.sleep(0.5)
            except Exception as exc:
                if isinstance(exc, ApiError) and exc.status_code != 503:  # finished meanwhile (409)
                    log.info("[Ingress] /edit client went away; job %s not cancelled: %s", job_id[:8], exc,
                             extra=for_job(job_id))
                    return
                if loop.time() > deadline:  # 503 or a Ray error: the queue replica is away (restarting)
                    log.warning("[Ingress] /edit client went away; job %s could not be cancelled: the queue "
                                "stayed away", job_id[:8], extra=for_job(job_id))
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def status(self, job_id: str, caller: Caller) -> JobView:
        self.mirror.start()
        view = self.mirror.job(job_id, caller)
        if view is None:  # the mirror cannot answer: not fresh, or a job it has not heard of yet
            view = await self.queue.status(job_id, caller)
            self.mirror.note(view)
        return view

    async def cancel(self, job_id: str, caller: Caller) -> JobView:
        view = await self.queue.cancel(job_id, caller)
        self.mirror.note(view)
        return view

    async def result(self, job_id: str, caller: Caller) -> tuple[str, bytes, JobView]:
        """(the result file's name, its PNG bytes, the job's view)."""
        return await self.queue.result(job_id, caller)

    async def follow(self, job_id: str, caller: Caller) -> tuple[JobView, AsyncIterator[JobView | None]]:
        """The job's view now (404 if the caller may not see it) and its later views as they change
        (``None``: nothing changed for a heartbeat), through this replica's shared feed."""
        first = await self.status(job_id, caller)
        return first, self.events.subscribe(job_id, first)

    async def preview(self, job_id: str, caller: Caller) -> tuple[int, bytes]:
        """(step, JPEG) of the job's latest live preview; 404 with the reason when there is none."""
        return await self.queue.get_preview(job_id, caller)

    async def jobs(self, caller: Caller, limit: int) -> list[JobView]:
        return await self.queue.station_jobs(caller, limit)

    async def queue_stats(self) -> dict:
        self.mirror.start()
        health = self.mirror.queue_health()
        if health and health.get("damaged"):  # an empty queue is not the truth: say why instead
            raise ServiceUnavailable(health["warnings"][0])
        return self.mirror.queue_stats() or await self.queue.queue_stats()

    # --- the service -------------------------------------------------------------------------------

    async def health(self) -> tuple[dict, bool]:
        """(/health's body, whether it is healthy enough to answer 200)."""
        self.mirror.start()
        try:
            h = self.mirror.queue_health() or await self.queue.health(within=5.0)
        except Exception:
            return {"status": "degraded", "warnings": ["The job queue is not reachable."], "current_model": None,
                    "model_loaded": False, "is_loading": False, "is_generating": False,
                    "queue_max_size": self.settings.max_queue_size,
                    "queue_cleanup_age_seconds": self.settings.cleanup_age_seconds, "workers": []}, False
        h = dict(h)
        refused = h.pop("refused", None)  # presets whose files a worker refused: their sentences are warnings
        if h.pop("damaged", False):  # the job database is not to be trusted: nothing is served
            return {"status": "unhealthy", **h}, False
        unusable = any(w["state"] == WorkerState.UNUSABLE for w in h["workers"])
        scaling = h.get("autoscaling")
        # Autoscaled to zero is a healthy server: a submit is accepted and starts a worker.
        asleep = bool(scaling) and not h["workers"] and scaling["min_workers"] == 0
        status = ("healthy" if (h["model_loaded"] or asleep) and not unusable and not refused and not
                  (asleep and h["warnings"]) else ("degraded" if h["warnings"] else "starting"))
        return {"status": status, **h}, True

    async def models(self) -> dict:
        self.mirror.start()
        h = self.mirror.queue_health() or await self.queue.health()
        models = {}
        refused = h.get("refused") or {}
        for name, p in self.settings.presets.items():
            missing = missing_weights(p) or refused.get(name)
            models[name] = {**p.public(), "available": missing is None, "missing": missing,
                            "running": _running(h["workers"], name)}
        return {"models": models, "default": h["current_model"],
                "note": "Use a name (or an alias such as 4-step) as `preset` on submit/edit or `model` on "
                        "load-model. Presets with available=false need their weights on the server first."}

    async def load_model(self, name: str) -> dict:
        answer = await self.queue.load_model(name, within=self.settings.load_timeout_seconds + QUICK_CALL_S)
        self.mirror.require(answer.pop("version"))  # health shows the new default from here on
        return answer


def _running(workers: list[dict], preset: str) -> dict | None:
    """What the first worker that describes ``preset`` runs for it, with that worker's libraries."""
    for worker in workers:
        running = worker.get("running") or {}
        if preset in running.get("presets", {}):
            return {**running["presets"][preset], "libraries": running["libraries"], "worker": worker["id"]}
    return None

