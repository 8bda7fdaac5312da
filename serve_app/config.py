"""The operator's settings: ``args:`` of config/serve.yaml, validated by the typed app builder.

``AppArgs`` is the only place settings are read from; the builder turns it into small frozen
settings objects for each deployment, with every path made absolute on the machine that builds the app.
"""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .images import MB, UploadLimits
from .presets import Preset
from .profiles import known, unknown_profile_message


class WorkerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1, le=64, description="model workers; each runs one job at a time")
    num_gpus: float = Field(0, ge=0, description="GPUs per worker: 1 on a GPU machine, 0 on CPU")
    num_cpus: float = Field(1, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources to pin workers")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores")
    png_compress_level: int = Field(1, ge=0, le=9, description="1 is fast; 6 is Pillow's default")
    attention_backend: str = Field("auto", description="auto: fastest available on the GPU (FlashAttention 3, ...)")
    compile: bool = Field(False, description="torch.compile the repeated transformer blocks (GPU)")
    warmup: bool = Field(False, description="run one edit at start so the first job pays no warm-up")
    engine: str = Field("serve_app.pipeline:EditEngine", pattern=r"^[\w.]+:[\w]+$",
                        description="the engine class (module:Class): EditEngine, or a subclass for tests")
    prepare_ahead: bool | None = Field(None, description="claim the next job on the current one's last step and "
                                                         "prepare it meanwhile (keeps a GPU busy); default: on GPUs")
    profile: str = Field("auto", description="memory/precision profile (README, Profiles); auto: the fastest "
                                             "that fits the card's free memory")
    gpu_memory_gib: float | None = Field(None, gt=0, le=4096,
                                         description="the card size this config is for: qwen-serve --plan "
                                                     "checks against it; a worker on a bigger card is capped to it")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v):
        if not known(v):
            raise ValueError(unknown_profile_message(v))
        return v


class WebhookArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = Field(default_factory=list,
                                     description="hosts (or host:port) webhooks may go to; empty: webhooks off")
    secret_file: str | None = Field(None, description="HMAC secret; default <state_dir>/webhook_secret "
                                                      "(made if missing); QWEN_WEBHOOK_SECRET wins")
    retry_seconds: float = Field(60, gt=0, le=86_400, description="keep retrying a failed delivery this long")
    timeout_seconds: float = Field(5, gt=0, le=60, description="per attempt")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_dir: str = Field("state", description="jobs database, key file, results and built models live here")
    results_dir: str | None = Field(None, description="default: <state_dir>/results")
    models_dir: str | None = Field(None, description="where the embedded tiny model is built; default <state_dir>/models")
    api_key_file: str | None = Field(None, description="default: <state_dir>/api_key")
    api_keys_file: str | None = Field(None, description="stations' keys (YAML/JSON: station -> key); "
                                                        "QWEN_API_KEYS_FILE wins")
    scheduling: Literal["fifo", "fair"] = Field("fifo", description="fair: stations take turns")
    max_jobs_per_station: int | None = Field(None, ge=1, description="queued + processing per station")
    webhooks: WebhookArgs = Field(default_factory=WebhookArgs)
    max_queue_size: int = Field(10, ge=1, le=10_000, description="queued + processing jobs")
    cleanup_age_seconds: float = Field(3600, gt=0, description="finished jobs are removed after this age")
    min_free_disk_mb: float = Field(256, ge=0, description="health warns when the results folder's disk has "
                                                          "less free space than this")
    job_lease_seconds: float = Field(300, ge=1, le=86_400,
                                     description="a running job whose worker shows no progress on it this long "
                                                 "runs once more, then fails; its worker is replaced")
    max_upload_mb: float = Field(10, gt=0, le=200, description="per image")
    max_images: int = Field(3, ge=1, le=3, description="input images per job (Plus pipelines take up to 3)")
    max_body_mb: float = Field(32, gt=0, le=1000, description="whole request; larger bodies get 413 unread")
    max_image_side: int = Field(2048, ge=64, le=16384)
    max_instruction_chars: int = Field(500, ge=1, le=10_000)
    max_system_prompt_chars: int = Field(2000, ge=1, le=20_000, description="the optional system_prompt field")
    default_preset: str | None = Field("tiny", description="preset for jobs that name none; null: load-model first")
    edit_timeout_seconds: float = Field(600, gt=0, description="how long a blocking /edit waits")
    load_timeout_seconds: float = Field(1800, gt=0)
    graceful_stop_seconds: float = Field(30, ge=0, le=3600,
                                         description="on SIGTERM (qwen-serve), running jobs get this long to "
                                                     "finish; the rest are queued again for the next start")
    ingress_replicas: int = Field(1, ge=1, le=64)
    worker: WorkerArgs = Field(default_factory=WorkerArgs)
    presets: dict[str, dict] = Field(default_factory=dict, description="added or changed presets")

    @field_validator("max_body_mb")
    @classmethod
    def _body_holds_an_image(cls, v, info):
        upload = info.data.get("max_upload_mb", 10)
        if v < upload:
            raise ValueError(f"max_body_mb ({v}) must be at least max_upload_mb ({upload})")
        return v

    def path(self, value: str | None, default: str) -> Path:
        return Path(value).expanduser().resolve() if value else (Path(self.state_dir) / default).expanduser().resolve()

    @property
    def upload_limits(self) -> UploadLimits:
        return UploadLimits(max_bytes=int(self.max_upload_mb * MB), max_side=self.max_image_side)


class QueueSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_queue_size: int
    cleanup_age_seconds: float
    results_dir: str
    jobs_db: str  # SQLite file with the job records and inputs
    presets: dict[str, Preset]
    default_preset: str | None
    load_timeout_seconds: float
    worker_resources: dict[str, float] = {}
    scheduling: str = "fifo"
    max_jobs_per_station: int | None = None
    webhook_secret: bytes | None = None
    webhook_retry_seconds: float = 60
    webhook_timeout_seconds: float = 5
    graceful_stop_seconds: float = 30
    min_free_disk_mb: float = 256
    job_lease_seconds: float = 300


class WorkerSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    models_dir: str
    device: str
    torch_threads: int | None
    png_compress_level: int
    attention_backend: str  # no defaults here: a field the builder forgets must fail, not go quiet
    compile: bool
    warmup: bool
    preload: Preset | None
    profile: str
    gpu_memory_gib: float | None
    plan_presets: tuple[Preset, ...]  # what `auto` plans for: the presets sharing the preload's base
    prepare_ahead: bool | None
    engine: str
    job_lease_seconds: float
    max_images: int


class IngressSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    upload_limits: UploadLimits
    max_images: int
    max_body_bytes: int
    max_instruction_chars: int
    max_system_prompt_chars: int
    edit_timeout_seconds: float
    load_timeout_seconds: float
    keys: tuple[tuple[bytes, str, bool], ...]  # (sha256 of a key, station, admin)
    webhook_allowed_hosts: tuple[str, ...] = ()
    presets: dict[str, Preset]
    cleanup_age_seconds: float
    max_queue_size: int
    upload_dir: str | None = None  # where uploads over 1 MB are spooled while a request is read
