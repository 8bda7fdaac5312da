"""The contract's status object of one job (``JobView``), from the job and what the queue knows of it
now (its position, its estimates, the feed's version)."""

from ..contract.protocol import JobStatus, JobView
from .job import Job, iso


def progress_of(job: Job) -> float:
    if job.status is JobStatus.COMPLETED:
        return 1.0
    if job.total_steps:
        return round(job.step / job.total_steps, 4)
    return 0.0


def job_view(job: Job, position: int | None, wait: int | None, eta: float | None, version: int,
             message: str | None = None) -> JobView:
    return JobView(
        job_id=job.id,
        status=job.status,
        position=position,
        created_at=iso(job.created_at),
        started_at=iso(job.started_at),
        completed_at=iso(job.completed_at),
        result_path=job.result_name,
        result_seed=job.seed if job.status is JobStatus.COMPLETED else None,
        error=job.error,
        instruction=job.instruction,
        model=job.preset,
        estimated_wait_seconds=wait,
        worker=job.worker_id[-8:] if job.worker_id else None,
        progress=progress_of(job),
        step=job.step,
        total_steps=job.total_steps,
        eta_seconds=eta,
        station=job.station,
        run_seconds=job.run_seconds,
        attempts=job.attempts,
        priority=job.priority,
        preview_step=job.preview_step,
        full_steps=job.full_steps,
        message=message,
        version=version,
    )
