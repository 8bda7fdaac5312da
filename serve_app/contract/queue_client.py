"""The queue replica as each caller holds it: one typed method per call (``faces``), each on the
transport it needs.

Serve sends a handle call either as a Ray actor call (by reference: arguments and answers go through
Ray's serializer and, when large, its object store) or, per call, over a gRPC connection between the
replicas (by value), which costs less per call. ``internal_calls: grpc`` (the default) sends the
small, frequent calls (status reads, the mirror's deltas, progress, cancel signals, heartbeats) by
gRPC. gRPC pickles with cloudpickle, which is wrong for two kinds of call, so those go as Ray calls
whatever the setting (``self._ray`` below):

- a call that carries an ``ObjectRef`` (a job's decoded pixels, ``transfer``): pickled outside Ray's
  serializer, the reference is "out of band", and Ray then keeps the object until the ingress replica
  that made it exits: every large upload's pixels would stay in the object store;
- a call that carries image bytes (uploads, results, previews) or may answer with many jobs (the
  mirror's full resync): the object store moves them without gRPC's copies and its message size
  limit (4 MB by default, ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``).

``internal_calls: ray`` sends every call as a Ray call. ``handle`` is a Serve ``DeploymentHandle``
to the queue, or anything with its surface (``options(_by_reference=...)``, ``.method.remote(*args)``
returning an awaitable): the benchmarks' in-process stand-in, the unit tests' recorder.
"""

import asyncio
from typing import Any

from ..auth import Caller
from ..errors import ApiError, api_error_of
from .protocol import (Changes, JobDone, JobFailed, JobRequest, JobTask, JobView, LoadDone, LoadTask, Outcome,
                       PreviewReport, StepReport)

QUICK_CALL_S = 15.0  # a queue call that is not a long poll answers within milliseconds


class _Transports:
    def __init__(self, handle: Any, grpc: bool):
        self.transport = "grpc" if grpc else "ray"
        self._ray = handle.options(_by_reference=True)
        self._fast = handle.options(_by_reference=not grpc)


class IngressQueue(_Transports):
    """``faces.IngressFace`` for an ingress replica. Every call has a time limit (a long poll's own
    ``timeout`` plus ``QUICK_CALL_S``); a refusal the queue answered or raised (a 404, a full queue's
    429, a damaged database's 503) is raised here as the ``ApiError`` it is; any other failure (the
    replica away, the time limit) is raised as it came."""

    async def _ask(self, pending, within: float):
        try:
            answer = await asyncio.wait_for(pending, within)
        except Exception as exc:
            err = api_error_of(exc)
            if err is not None:
                raise err from None
            raise
        if isinstance(answer, ApiError):
            raise answer
        return answer

    async def admit(self, caller: Caller, key: str | None, fingerprint: str | None) -> JobView | None:
        return await self._ask(self._fast.admit.remote(caller, key, fingerprint), QUICK_CALL_S)

    async def submit(self, request: JobRequest, caller: Caller) -> tuple[JobView, bool]:
        # by reference: the upload's bytes and the reference to its decoded pixels
        return await self._ask(self._ray.submit.remote(request, caller), QUICK_CALL_S)

    async def status(self, job_id: str, caller: Caller) -> JobView:
        return await self._ask(self._fast.status.remote(job_id, caller), QUICK_CALL_S)

    async def cancel(self, job_id: str, caller: Caller) -> JobView:
        return await self._ask(self._fast.cancel.remote(job_id, caller), QUICK_CALL_S)

    async def watch(self, job_id: str, caller: Caller, last: tuple | None, timeout: float) -> JobView | None:
        return await self._ask(self._fast.watch.remote(job_id, caller, last, timeout), timeout + QUICK_CALL_S)

    async def result(self, job_id: str, caller: Caller) -> tuple[str, bytes, JobView]:
        return await self._ask(self._ray.result.remote(job_id, caller), QUICK_CALL_S)  # the PNG

    async def wait(self, job_id: str, timeout: float, caller: Caller) -> JobView:
        return await self._ask(self._fast.wait.remote(job_id, timeout, caller), timeout + QUICK_CALL_S)

    async def get_preview(self, job_id: str, caller: Caller) -> tuple[int, bytes]:
        return await self._ask(self._ray.get_preview.remote(job_id, caller), QUICK_CALL_S)  # the JPEG

    async def station_jobs(self, caller: Caller, limit: int = 20) -> list[JobView]:
        return await self._ask(self._fast.station_jobs.remote(caller, limit), QUICK_CALL_S)

    async def queue_stats(self) -> dict:
        return await self._ask(self._fast.queue_stats.remote(), QUICK_CALL_S)

    async def changes(self, epoch: str | None, since: int | None, timeout: float) -> Changes:
        # a delta (the few jobs changed since ``since``) by the fast transport; a full resync (every
        # job kept for the TTL) as a Ray call
        via = self._ray if since is None else self._fast
        return await self._ask(via.changes.remote(epoch, since, timeout), timeout + QUICK_CALL_S)

    async def health(self, *, within: float = QUICK_CALL_S) -> dict:
        return await self._ask(self._fast.health.remote(), within)

    async def load_model(self, name: str, *, within: float = QUICK_CALL_S) -> dict:
        return await self._ask(self._fast.load_model.remote(name), within)


class WorkerQueue(_Transports):
    """``faces.WorkerFace`` for a model worker: each call as it came, no time limit of its own (the
    long polls carry theirs; the worker retries its reports itself, ``worker.deployment``)."""

    async def heartbeat(self, worker_id: str, working_on: list[str] | tuple = ()) -> None:
        return await self._fast.heartbeat.remote(worker_id, working_on)

    async def worker_state(self, worker_id: str, state: str, preset: str | None = None,
                           detail: str | None = None, placement: dict | None = None) -> None:
        return await self._fast.worker_state.remote(worker_id, state, preset, detail, placement)

    async def next_task(self, worker_id: str, preset: str | None = None,
                        timeout: float = 5.0, ahead: bool = False) -> JobTask | LoadTask | None:
        # by reference: the task carries the job's upload bytes or its pixels' reference
        return await self._ray.next_task.remote(worker_id, preset, timeout, ahead)

    async def inputs(self, worker_id: str, job_id: str) -> list[bytes] | None:
        return await self._ray.inputs.remote(worker_id, job_id)  # the stored upload's bytes

    async def progress(self, worker_id: str, report: StepReport) -> None:
        return await self._fast.progress.remote(worker_id, report)

    async def preview(self, worker_id: str, report: PreviewReport) -> None:
        return await self._ray.preview.remote(worker_id, report)  # the JPEG

    async def cancel_signal(self, worker_id: str, job_id: str, timeout: float) -> bool:
        return await self._fast.cancel_signal.remote(worker_id, job_id, timeout)

    async def job_done(self, worker_id: str, report: JobDone) -> Outcome:
        return await self._ray.job_done.remote(worker_id, report)  # the result's PNG

    async def job_failed(self, worker_id: str, report: JobFailed) -> Outcome:
        return await self._fast.job_failed.remote(worker_id, report)

    async def load_done(self, worker_id: str, report: LoadDone) -> None:
        return await self._fast.load_done.remote(worker_id, report)

    async def scaling_figures(self) -> dict[str, int]:
        return await self._fast.scaling_figures.remote()

    async def worker_left(self, worker_id: str) -> list[str]:
        return await self._fast.worker_left.remote(worker_id)


class OperatorQueue:
    """``faces.OperatorFace`` for ``qwen-serve``: a Ray call, as every call of the launcher's."""

    def __init__(self, handle: Any):
        self._ray = handle

    async def drain(self) -> dict:
        return await self._ray.drain.remote()
