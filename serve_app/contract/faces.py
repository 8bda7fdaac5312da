"""The queue's faces: what each kind of caller may ask of the queue replica, as typed Protocols.

``queue.actor.QueueActor`` implements all three; ``queue_client`` has one typed method per call for
each caller, so a call is written ``await queue.submit(request, caller)`` and a renamed or re-typed
queue method fails a unit test (``tests/unit/contract/test_faces.py``), not a station's job at run
time. The signatures are the queue's own. The ingress's calls marked ``@answers`` on the queue return
a refusal (an ``ApiError``) as their answer; the ingress's client raises it again, so the return
types here are what a caller gets. Extra parameters a client adds are keyword-only, with defaults
(how long to wait for the answer).
"""

from typing import Protocol

from ..auth import Caller
from .protocol import (Changes, JobDone, JobFailed, JobRequest, JobTask, JobView, LoadDone, LoadTask, Outcome,
                       PreviewReport, StepReport)


class IngressFace(Protocol):
    """What an ingress replica asks: the stations' jobs, the mirror's feed, health and model loads."""

    async def admit(self, caller: Caller, key: str | None, fingerprint: str | None) -> JobView | None: ...

    async def submit(self, request: JobRequest, caller: Caller) -> tuple[JobView, bool]: ...

    async def status(self, job_id: str, caller: Caller) -> JobView: ...

    async def cancel(self, job_id: str, caller: Caller) -> JobView: ...

    async def watch(self, job_id: str, caller: Caller, last: tuple | None, timeout: float) -> JobView | None: ...

    async def result(self, job_id: str, caller: Caller) -> tuple[str, bytes, JobView]: ...

    async def wait(self, job_id: str, timeout: float, caller: Caller) -> JobView: ...

    async def get_preview(self, job_id: str, caller: Caller) -> tuple[int, bytes]: ...

    async def station_jobs(self, caller: Caller, limit: int = 20) -> list[JobView]: ...

    async def queue_stats(self) -> dict: ...

    async def changes(self, epoch: str | None, since: int | None, timeout: float) -> Changes: ...

    async def health(self) -> dict: ...

    async def load_model(self, name: str) -> dict: ...


class WorkerFace(Protocol):
    """What a model worker asks and reports: liveness, its next task, a job's inputs, progress and
    outcomes."""

    async def heartbeat(self, worker_id: str, working_on: list[str] | tuple = ()) -> None: ...

    async def worker_state(self, worker_id: str, state: str, preset: str | None = None,
                           detail: str | None = None, placement: dict | None = None) -> None: ...

    async def next_task(self, worker_id: str, preset: str | None = None,
                        timeout: float = 5.0, ahead: bool = False) -> JobTask | LoadTask | None: ...

    async def inputs(self, worker_id: str, job_id: str) -> list[bytes] | None: ...

    async def progress(self, worker_id: str, report: StepReport) -> None: ...

    async def preview(self, worker_id: str, report: PreviewReport) -> None: ...

    async def cancel_signal(self, worker_id: str, job_id: str, timeout: float) -> bool: ...

    async def job_done(self, worker_id: str, report: JobDone) -> Outcome: ...

    async def job_failed(self, worker_id: str, report: JobFailed) -> Outcome: ...

    async def load_done(self, worker_id: str, report: LoadDone) -> None: ...


class OperatorFace(Protocol):
    """What ``qwen-serve`` asks on SIGTERM."""

    async def drain(self) -> dict: ...


FACES = (IngressFace, WorkerFace, OperatorFace)
