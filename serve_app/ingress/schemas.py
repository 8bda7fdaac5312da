"""Response shapes of the HTTP API (the stations' contract, plus documented additions)."""

from pydantic import BaseModel, ConfigDict, Field

from ..contract.protocol import JobStatus

JOB = "3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f"


def example(**values) -> ConfigDict:
    """One example answer for /docs (the route's 200)."""
    return ConfigDict(json_schema_extra={"examples": [values]})


class ErrorBody(BaseModel):
    detail: str = Field(examples=["Queue is full (maximum 10 jobs). Please try again later."])


class SubmitResponse(BaseModel):
    model_config = example(job_id=JOB, status="queued", position=2, message="Job queued successfully. Position: 2",
                           estimated_wait_seconds=6)
    job_id: str
    status: str = "queued"
    position: int | None
    message: str
    estimated_wait_seconds: int | None = Field(description="seconds until the result should be ready")


class JobStatusResponse(BaseModel):
    model_config = example(
        job_id=JOB, status="processing", position=None, created_at="2026-11-28T09:00:00Z",
        started_at="2026-11-28T09:00:04Z", completed_at=None, result_path=None, result_seed=42, error=None,
        instruction="make the sky blue", model="qwen-4step", estimated_wait_seconds=1, worker="a1b2c3d4e5f6",
        progress=0.5, step=2, total_steps=4, eta_seconds=0.9, station="front-desk", run_seconds=None, attempts=1,
        priority="normal", preview_step=2)
    job_id: str
    status: JobStatus = Field(description="queued | processing | completed | failed | cancelled")
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
    priority: str = Field("normal", description="addition: low | normal | high; higher starts first, and a "
                                                "queued job's position can grow when a higher one arrives")
    preview_step: int | None = Field(None, description="addition: the step of the latest live preview (jobs "
                                                       "submitted with previews=true), at .../preview")
    full_steps: int | None = Field(None, description="addition: of a completed job, the denoising steps its "
                                                     "transformer ran in full: total_steps, or fewer where the "
                                                     "preset's step cache reused work")
    message: str | None = Field(None, description="addition: why a queued job waits when it is not for the jobs "
                                                  "ahead, e.g. a model worker starting (autoscaling from zero)")


class JobListResponse(BaseModel):
    model_config = example(jobs=[JobStatusResponse.model_config["json_schema_extra"]["examples"][0]])
    jobs: list[JobStatusResponse] = Field(description="newest first")


class QueueResponse(BaseModel):
    model_config = example(queue_size=3, max_queue_size=10, queued_count=2, processing_count=1, completed_count=57,
                           failed_count=1, current_job_id=JOB, total_jobs=61, running_job_ids=[JOB],
                           refused_count=4, cancelled_count=2, scheduling="fifo", preset_switches=3)
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
    preset_switches: int = Field(0, description="jobs handed to a worker that held another preset (since "
                                                "the queue replica started)")


class WorkerView(BaseModel):
    id: str
    state: str = Field(description="starting | loading | idle | ready | busy | failed | unusable (its "
                                   "profile cannot run on its device: see detail)")
    preset: str | None
    detail: str | None = None
    gpu_ids: list[int] = Field(default_factory=list)
    device: str | None = None
    node: str | None = None
    profile: str | None = Field(None, description="addition: the memory/precision profile the worker runs")
    profile_reason: str | None = Field(None, description="addition: why that profile (auto's choice, or the config)")
    running: dict | None = Field(None, description="addition: what this worker runs: `libraries` (torch, diffusers, "
                                                   "transformers, peft versions) and, for each preset whose weights "
                                                   "it has, `presets.<name>`: base (hub id and snapshot revision, or "
                                                   "local folder name and fingerprint), LoRA files with SHA-256, "
                                                   "profile")
    refused: dict[str, str] | None = Field(None, description="addition: presets this worker will not run, each "
                                                             "with why (a GGUF transformer file that is not "
                                                             "usable, found when the worker started)")


class AutoscalingView(BaseModel):
    min_workers: int = Field(description="the fewest workers kept (0: none while nothing waits)")
    max_workers: int
    workers: int = Field(description="workers up now (starting ones included)")
    starting: bool = Field(description="jobs wait and no worker is ready: one is being started for them")
    expected_start_seconds: float = Field(description="what a worker's start takes, as measured here (the "
                                                      "configured cold_start_seconds until one was)")
    measured_start_seconds: list[float] = Field(default_factory=list, description="the latest starts measured")


class HealthResponse(BaseModel):
    model_config = example(status="healthy", current_model="qwen-4step", model_loaded=True, is_loading=False,
                           is_generating=True, queue_max_size=10, queue_cleanup_age_seconds=3600.0,
                           workers=[{"id": "a1b2c3d4e5f6", "state": "busy", "preset": "qwen-4step",
                                     "detail": None, "gpu_ids": [0], "device": "cuda", "node": "5c1e0f3a9b2d",
                                     "profile": "fp8", "profile_reason": "auto: fp8 needs 39.2 GiB of the "
                                     "139.8 GiB free on NVIDIA H200, the fastest profile that fits"}],
                           warnings=[])
    status: str = Field(description="healthy (a worker is ready, or none is needed: autoscaled to zero), "
                                    "starting, degraded (see warnings: also "
                                    "when a worker cannot run its profile), or unhealthy (503: the job database "
                                    "is damaged; the first warning says what was found and what to do)")
    current_model: str | None
    model_loaded: bool
    is_loading: bool
    is_generating: bool
    queue_max_size: int
    queue_cleanup_age_seconds: float
    workers: list[WorkerView] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, description="e.g. no node can host a model worker")
    autoscaling: AutoscalingView | None = Field(None, description="addition, with worker.autoscaling: the "
                                                                  "bounds, the workers up, a start under way")


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
    prompt_template: str | None = Field(None, description="addition: what the model is asked ({system_prompt}, "
                                                          "{instruction} filled in)")
    negative_prompt: str | None = Field(None, description="addition: the negative prompt, where CFG runs")
    step_cache: bool = Field(False, description="addition: steps may reuse cached transformer work (cache-dit): "
                                                "faster, near the uncached pixels, not equal to them")
    running: dict | None = Field(None, description="addition: what a worker runs for this preset (as in /health's "
                                                   "workers[].running.presets), with its libraries; null until a "
                                                   "worker has reported it")


class ModelsResponse(BaseModel):
    model_config = example(
        models={"qwen-4step": {"name": "qwen-4step", "suffix": "4step", "steps": 4, "cfg_scale": 1.0,
                               "estimated_time": "~2 s", "description": "Lightning LoRA, 4 steps",
                               "aliases": ["4-step"], "estimated_seconds": 1.8, "available": True, "missing": None}},
        default="qwen-4step", note="Use a name (or an alias such as 4-step) as `preset` on submit/edit.")
    models: dict[str, PresetView]
    note: str
    default: str | None = None


class LoadModelResponse(BaseModel):
    model_config = example(status="success", message="Model qwen-8step loaded successfully", model="qwen-8step",
                           preset="qwen-8step", model_name="Qwen/Qwen-Image-Edit-2509", load_time_seconds=2.7,
                           estimated_generation_time="~4 s")
    status: str
    message: str
    model: str
    preset: str
    model_name: str
    load_time_seconds: float
    estimated_generation_time: str
