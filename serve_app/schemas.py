"""Response shapes of the HTTP API (the stations' contract, plus documented additions)."""

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(examples=["Queue is full (maximum 10 jobs). Please try again later."])


class SubmitResponse(BaseModel):
    job_id: str
    status: str = "queued"
    position: int | None
    message: str
    estimated_wait_seconds: int | None = Field(description="seconds until the result should be ready")


class JobStatusResponse(BaseModel):
    job_id: str
    status: str = Field(description="queued | processing | completed | failed | cancelled")
    position: int | None = Field(description="1-based among queued jobs, live; null unless queued")
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    result_path: str | None = Field(description="result file NAME, download it from .../result")
    result_seed: int | None
    error: str | None
    instruction: str
    model: str
    estimated_wait_seconds: int | None = Field(None, description="addition: seconds until the result")
    worker: str | None = Field(None, description="addition: the model worker that ran (or runs) the job")
    progress: float = Field(0.0, description="addition: 0 to 1, updated after every denoising step")
    step: int = Field(0, description="addition: denoising steps done")
    total_steps: int | None = Field(None, description="addition: denoising steps of the job's preset")
    eta_seconds: float | None = Field(None, description="addition: seconds until the result (queued: wait "
                                                        "plus run time; processing: steps left x step time)")
    station: str | None = Field(None, description="addition: the station (API key) that submitted the job")
    run_seconds: float | None = Field(None, description="addition: the model worker's time on the job, once finished")
    attempts: int = Field(0, description="addition: times a worker started the job (a crash may add one run)")


class QueueResponse(BaseModel):
    queue_size: int = Field(description="queued + processing: what counts against max_queue_size")
    max_queue_size: int
    queued_count: int
    processing_count: int
    completed_count: int
    failed_count: int
    current_job_id: str | None
    total_jobs: int
    running_job_ids: list[str] = Field(default_factory=list)
    refused_count: int = 0
    cancelled_count: int = 0
    scheduling: str = Field("fifo", description="fifo, or fair (stations take turns)")


class WorkerView(BaseModel):
    id: str
    state: str = Field(description="starting | loading | idle | ready | busy | failed")
    preset: str | None
    detail: str | None = None
    gpu_ids: list[int] = Field(default_factory=list)
    device: str | None = None
    node: str | None = None


class HealthResponse(BaseModel):
    status: str = Field(description="healthy (a worker is ready), starting, or degraded (see warnings)")
    current_model: str | None
    model_loaded: bool
    is_loading: bool
    is_generating: bool
    queue_max_size: int
    queue_cleanup_age_seconds: float
    workers: list[WorkerView] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="e.g. no node can host a model worker")


class PresetView(BaseModel):
    name: str
    suffix: str
    steps: int
    cfg_scale: float
    estimated_time: str
    description: str
    aliases: list[str]
    estimated_seconds: float
    available: bool
    missing: str | None = None


class ModelsResponse(BaseModel):
    models: dict[str, PresetView]
    note: str
    default: str | None = None


class LoadModelResponse(BaseModel):
    status: str
    message: str
    model: str
    preset: str
    model_name: str
    load_time_seconds: float
    estimated_generation_time: str
