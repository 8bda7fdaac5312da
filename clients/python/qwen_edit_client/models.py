"""What the server answers, as the client reads it (pydantic).

These are the client's own definitions of the wire format, so the client installs without the
server. They accept fields they do not know (a newer server may add some) and give every
addition to the original contract a default (an older server may lack it). The server's test suite
checks that every field here exists in the server's answers and the other way round
(tests/unit/ingress/test_client_models.py).
"""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class SubmitResponse(_Answer):
    job_id: str
    status: str = "queued"
    position: int | None = None
    message: str = ""
    estimated_wait_seconds: int | None = None


class JobStatusResponse(_Answer):
    job_id: str
    status: JobStatus
    position: int | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    result_path: str | None = None
    result_seed: int | None = None
    error: str | None = None
    instruction: str = ""
    model: str = ""
    estimated_wait_seconds: int | None = None
    worker: str | None = None
    progress: float = 0.0
    step: int = 0
    total_steps: int | None = None
    eta_seconds: float | None = None
    station: str | None = None
    run_seconds: float | None = None
    attempts: int = 0
    priority: str = "normal"
    preview_step: int | None = None
    full_steps: int | None = None  # of a completed job: steps run in full (a preset's step cache skips some)
    message: str | None = None  # why a queued job waits, when it is not the jobs ahead (a worker starting)


class JobListResponse(_Answer):
    jobs: list[JobStatusResponse]


class QueueResponse(_Answer):
    queue_size: int
    max_queue_size: int
    queued_count: int = 0
    processing_count: int = 0
    completed_count: int = 0
    failed_count: int = 0
    current_job_id: str | None = None
    total_jobs: int = 0
    running_job_ids: list[str] = Field(default_factory=list)
    refused_count: int = 0
    cancelled_count: int = 0
    scheduling: str = "fifo"
    preset_switches: int = 0


class WorkerView(_Answer):
    id: str
    state: str
    preset: str | None = None
    detail: str | None = None
    gpu_ids: list[int] = Field(default_factory=list)
    device: str | None = None
    node: str | None = None
    profile: str | None = None
    profile_reason: str | None = None
    running: dict | None = None  # libraries and, per preset, base revision, LoRA SHA-256s, profile
    refused: dict[str, str] | None = None  # presets this worker will not run (a bad GGUF file), with why


class AutoscalingView(_Answer):
    min_workers: int = 0
    max_workers: int = 0
    workers: int = 0
    starting: bool = False
    expected_start_seconds: float = 0.0
    measured_start_seconds: list[float] = Field(default_factory=list)


class HealthResponse(_Answer):
    status: str
    current_model: str | None = None
    model_loaded: bool = False
    is_loading: bool = False
    is_generating: bool = False
    queue_max_size: int = 0
    queue_cleanup_age_seconds: float = 0.0
    workers: list[WorkerView] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    autoscaling: AutoscalingView | None = None


class PresetView(_Answer):
    name: str
    suffix: str = ""
    steps: int = 0
    cfg_scale: float = 1.0
    estimated_time: str = ""
    description: str = ""
    aliases: list[str] = Field(default_factory=list)
    estimated_seconds: float = 0.0
    available: bool = True
    missing: str | None = None
    prompt_template: str | None = None
    negative_prompt: str | None = None
    step_cache: bool = False  # its steps may reuse cached transformer work (cache-dit)
    running: dict | None = None  # what a worker runs for this preset, with its libraries


class ModelsResponse(_Answer):
    models: dict[str, PresetView]
    note: str = ""
    default: str | None = None
