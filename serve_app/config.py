"""The operator's settings: ``args:`` of config/serve.yaml, validated by the typed app builder.

``AppArgs`` is the only place settings are read from; ``build_settings`` turns it, once, into the
frozen ``Settings`` every deployment is built with, each value in one place and every path made
absolute on the machine that builds the app.
"""

import importlib.util
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .auth import KeyEntry, load_keyring
from .image_checks import DEFAULT_LABELS, NUDENET, NUDENET_INSTALL, NUDENET_LABELS, ImagePolicy
from .images import MB, UploadLimits
from .presets import Preset, build_registry, missing_weights, resolve
from .profiles import known, unknown_profile_message
from .prompts import DEFAULT_BLOCKED_TERMS, PromptPolicy
from .webhooks import load_secret


class AutoscalingArgs(BaseModel):
    """``worker.autoscaling``: the model workers follow the queue (``worker/scaling.py``). Serve
    decides, with these bounds and delays; a worker chosen to go finishes its job first."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_workers: int = Field(1, ge=0, le=64, description="never fewer; 0: none while nothing waits (a cold "
                                                        "start on the next submit)")
    max_workers: int = Field(4, ge=1, le=64, description="never more (on a cluster: what its GPU nodes can hold)")
    jobs_per_worker: int = Field(1, ge=1, le=10, description="queued jobs that ask for one more worker (1: a "
                                                             "worker for every job waiting, up to max_workers)")
    upscale_delay_seconds: float = Field(5, ge=0, le=3600, description="how long more workers must be wanted "
                                                                       "before one is added")
    downscale_delay_seconds: float = Field(120, ge=0, le=86_400, description="how long fewer workers must be "
                                                                           "wanted before one goes")
    downscale_to_zero_delay_seconds: float | None = Field(
        None, ge=0, le=86_400, description="before the last worker goes (min_workers 0); default: "
                                           "downscale_delay_seconds")
    look_back_seconds: float = Field(10, ge=0.5, le=600, description="the window Serve averages the "
                                                                     "workers' reports of the queue over")
    cold_start_seconds: float = Field(60, gt=0, le=3600, description="a worker's start-up time for the ETAs "
                                                                     "until one has been measured")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_workers > self.max_workers:
            raise ValueError(f"worker.autoscaling.min_workers ({self.min_workers}) must not exceed "
                             f"max_workers ({self.max_workers})")
        return self

    def serve_config(self) -> dict:
        """Serve's ``autoscaling_config`` for the ModelWorker deployment. The look-back must exceed
        Serve's metrics interval (its default 10 s unless set below it)."""
        look_back = self.look_back_seconds
        return {
            "min_replicas": self.min_workers, "max_replicas": self.max_workers,
            "initial_replicas": self.min_workers,
            "upscale_delay_s": self.upscale_delay_seconds, "downscale_delay_s": self.downscale_delay_seconds,
            "downscale_to_zero_delay_s": self.downscale_to_zero_delay_seconds,
            "look_back_period_s": look_back, "metrics_interval_s": min(10.0, look_back / 2),
            "policy": {"policy_function": "serve_app.worker.scaling:QueueDepthPolicy",
                       "policy_kwargs": {"jobs_per_worker": self.jobs_per_worker}},
        }


class WorkerArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1, le=64, description="model workers; each runs one job at a time")
    autoscaling: AutoscalingArgs | None = Field(None, description="instead of num_replicas: workers follow the "
                                                                  "queue between min_workers and max_workers")
    num_gpus: float = Field(0, ge=0, description="GPUs per worker: 1 on a GPU machine, 0 on CPU")
    num_cpus: float = Field(1, ge=0)
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources to pin workers")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch; default: all cores")
    png_compress_level: int = Field(1, ge=0, le=9, description="1 is fast; 6 is Pillow's default")
    attention_backend: str = Field("auto", description="auto: fastest available on the GPU (FlashAttention 3, ...)")
    compile: bool = Field(False, description="torch.compile the repeated transformer blocks (GPU)")
    warmup: bool = Field(False, description="run one edit at start so the first job pays no warm-up")
    engine: str = Field("serve_app.worker.engine:EditEngine", pattern=r"^[\w.]+:[\w]+$",
                        description="the engine class (module:Class): EditEngine, or a subclass for tests")
    prepare_ahead: bool | None = Field(None, description="prepare the next job (claimed on the current one's last "
                                                         "step) meanwhile (keeps a GPU busy); default: on GPUs")
    profile: str = Field("auto", description="memory/precision profile (docs/profiles.md); auto: the fastest "
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

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self):
        if self.autoscaling is not None and "num_replicas" in self.model_fields_set:
            raise ValueError("set worker.num_replicas (a fixed number of workers) or worker.autoscaling "
                             "(workers that follow the queue), not both")
        return self


class WebhookArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed_hosts: list[str] = Field(default_factory=list,
                                     description="hosts (or host:port) webhooks may go to; empty: webhooks off")
    secret_file: str | None = Field(None, description="HMAC secret; default <state_dir>/webhook_secret "
                                                      "(made if missing); QWEN_WEBHOOK_SECRET wins")
    retry_seconds: float = Field(60, gt=0, le=86_400, description="keep retrying a failed delivery this long")
    timeout_seconds: float = Field(5, gt=0, le=60, description="per attempt")


class PromptPolicyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="refuse instructions and system prompts with a blocked term (400)")
    blocked_terms: list[str] = Field(list(DEFAULT_BLOCKED_TERMS), max_length=10_000,
                                     description="a list given, even an empty one, replaces the default")

    @field_validator("blocked_terms")
    @classmethod
    def _plain_terms(cls, v):
        for term in v:
            if not term.strip() or len(term) > 200:
                raise ValueError(f"blocked term {term[:40]!r} must be 1 to 200 characters, not only spaces")
        return v

    def policy(self) -> PromptPolicy:
        return PromptPolicy(self.enabled, tuple(t.strip() for t in self.blocked_terms))


class OutputPolicyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="check each result before it is stored; a withheld one fails its job")
    checker: str = Field(NUDENET, pattern=r"^(nudenet|[\w.]+:\w+)$",
                         description="nudenet (the opt-in extra, AGPL-3.0), or module:Class of another checker")
    labels: list[str] = Field(list(DEFAULT_LABELS), min_length=1, description="what the checker may not find")
    threshold: float = Field(0.5, gt=0, le=1, description="a finding counts from this score on")
    uploads: bool = Field(False, description="also check each upload before it is queued (400 when refused)")

    @model_validator(mode="after")
    def _known_labels(self):
        if self.checker == NUDENET:
            unknown = sorted(set(self.labels) - set(NUDENET_LABELS))
            if unknown:
                raise ValueError(f"output_policy.labels: {unknown[0]!r} is not a NudeNet label; choose from "
                                 f"{', '.join(NUDENET_LABELS)}")
            if self.enabled and importlib.util.find_spec("nudenet") is None:
                raise ValueError(f"output_policy.checker nudenet is not installed: {NUDENET_INSTALL}")
        return self

    def policy(self) -> ImagePolicy | None:
        return ImagePolicy(self.checker, tuple(self.labels), self.threshold, self.uploads) if self.enabled else None


class RateLimitArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_second: float = Field(20, gt=0, le=100_000, description="per station (API key), on average")
    burst: int = Field(60, ge=1, le=1_000_000, description="requests a station may send at once")


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
    priority_max_passes: int = Field(3, ge=0, le=1000,
                                     description="a waiting job lets at most this many later jobs of higher "
                                                 "priority start first; then it starts next (no starvation)")
    preset_affinity: bool = Field(True, description="hand each job to an idle worker that already holds its "
                                                    "preset when there is one (fewer preset switches)")
    webhooks: WebhookArgs = Field(default_factory=WebhookArgs)
    prompt_policy: PromptPolicyArgs = Field(default_factory=PromptPolicyArgs)
    output_policy: OutputPolicyArgs = Field(default_factory=OutputPolicyArgs)
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
    http_proxy: Literal["python", "haproxy"] = Field(
        "python", description="haproxy: Ray Serve's direct ingress, HAProxy in front of the ingress replicas "
                              "(the binary ships with ray[serve] on Linux); applied by qwen-serve when it "
                              "starts the cluster (RAY_SERVE_ENABLE_HA_PROXY=1)")
    internal_calls: Literal["grpc", "ray"] = Field(
        "grpc", description="how the ingress and the workers call the queue: grpc (Serve's gRPC transport "
                            "for the small, frequent calls; images and object references still go as Ray "
                            "calls) or ray (Ray actor calls only)")
    rate_limit: RateLimitArgs | None = Field(default_factory=RateLimitArgs,
                                             description="per-station request limit (429 with Retry-After "
                                                         "beyond it); null: none")
    queue_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources the queue replica needs: on a cluster, one "
                                          "only the node with state_dir has, so Serve restarts it only there")
    ingress_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each ingress replica needs (e.g. the head's, "
                                          "next to the HTTP proxy); default: any node")
    worker: WorkerArgs = Field(default_factory=WorkerArgs)
    presets: dict[str, dict] = Field(default_factory=dict, description="added or changed presets")

    def cluster_env(self) -> dict[str, str]:
        """The environment Serve must start its cluster with for ``http_proxy`` (Serve reads these
        switches once, when its processes start). ``haproxy`` is Serve's direct ingress together
        with its throughput-optimized mode, as Ray's docs pair them (replicas' user code and
        handle routers on one event loop, GC frozen after start-up, request logs buffered), with
        the replicas' log lines kept on the console. ``internal_calls`` needs none: each call picks
        its transport (``queue_client``)."""
        env = {}
        if self.http_proxy == "haproxy":
            env.update(RAY_SERVE_ENABLE_HA_PROXY="1", RAY_SERVE_THROUGHPUT_OPTIMIZED="1", RAY_SERVE_LOG_TO_STDERR="1")
        return env

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
    """What the queue enforces (the ingress reads ``max_jobs_per_station`` too: a hint that skips a hop)."""
    model_config = ConfigDict(frozen=True)

    results_dir: str
    jobs_db: str  # SQLite file with the job records and inputs
    scheduling: str
    max_jobs_per_station: int | None
    priority_max_passes: int
    preset_affinity: bool
    webhook_secret: bytes | None
    webhook_retry_seconds: float
    webhook_timeout_seconds: float
    graceful_stop_seconds: float
    min_free_disk_mb: float
    actor_options: dict  # Ray actor options of the queue replica (its pinning resources)


class WorkerSettings(BaseModel):
    """What only the model workers read."""
    model_config = ConfigDict(frozen=True)

    models_dir: str
    device: str
    torch_threads: int | None
    png_compress_level: int
    attention_backend: str  # no defaults here: a field the builder forgets must fail, not go quiet
    compile: bool
    warmup: bool
    preload: str | None  # the default preset, when its weights are here
    profile: str
    gpu_memory_gib: float | None
    plan_presets: tuple[str, ...]  # what `auto` plans for: the presets sharing the preload's base
    prepare_ahead: bool | None
    engine: str
    num_replicas: int
    autoscaling: AutoscalingArgs | None  # None: num_replicas workers, always
    actor_options: dict  # Ray actor options of each worker (GPUs, CPUs, custom resources)


class IngressSettings(BaseModel):
    """What only the ingress reads."""
    model_config = ConfigDict(frozen=True)

    replicas: int
    actor_options: dict  # Ray actor options of each ingress replica
    upload_limits: UploadLimits
    max_body_bytes: int
    max_instruction_chars: int
    max_system_prompt_chars: int
    prompt_policy: PromptPolicy
    edit_timeout_seconds: float
    keys: tuple[KeyEntry, ...]
    rate_limit: RateLimitArgs | None  # for the whole app; each replica enforces its share
    webhook_allowed_hosts: tuple[str, ...]
    upload_dir: str | None  # where uploads over 1 MB are spooled while a request is read


class Settings(BaseModel):
    """Everything the deployments are built with, each value once: what more than one of them reads
    at the top, the rest in the part of the one that reads it. Every deployment gets the whole object."""
    model_config = ConfigDict(frozen=True)

    presets: dict[str, Preset]
    default_preset: str | None
    max_queue_size: int
    cleanup_age_seconds: float
    load_timeout_seconds: float
    job_lease_seconds: float
    max_images: int
    internal_calls: Literal["grpc", "ray"]  # the ingress's and workers' queue calls (queue_client)
    output_policy: ImagePolicy | None  # the picture check: results (workers) and, optionally, uploads (ingress)
    queue: QueueSettings
    worker: WorkerSettings
    ingress: IngressSettings

    @property
    def worker_health_check_seconds(self) -> float:
        """How often Serve asks each worker whether it is stuck (``ModelWorker.check_health``). Serve
        replaces a replica after three failed checks, so a third of the lease (within 1 s and Serve's
        default of 10 s) replaces a hung worker about one lease after its job's lease ran out."""
        return min(10.0, max(1.0, self.job_lease_seconds / 3))

    @property
    def worker_graceful_seconds(self) -> float:
        """How long Serve lets a worker chosen to stop (scaled down, redeployed) finish its job
        before it kills the process: the graceful stop's time plus the hand-back's margin
        (``ModelWorker.__del__`` hands an unfinished job back, uncharged, before then)."""
        return self.queue.graceful_stop_seconds + 10.0

    @property
    def worker_resources(self) -> dict[str, float]:
        """What one worker holds, in Ray's resource names (the queue checks the cluster has room)."""
        options = self.worker.actor_options
        return {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options.get("resources", {})}


def planned_presets(presets: dict[str, Preset], default: str | None) -> tuple[str, ...]:
    """The presets a worker's ``auto`` profile must fit: those in the worker's profile that share the
    default preset's base (all of them when there is no default); LoRA and working area vary among them."""
    own = [p for p in presets.values() if p.profile is None]
    if default is not None and presets[default].profile is None:
        own = [p for p in own if p.base == presets[default].base]
    return tuple(p.name for p in own)


def _pinned(resources: dict[str, float]) -> dict:
    """Actor options of a replica that holds no CPU (it mostly waits on I/O) and needs these resources."""
    return {"num_cpus": 0, **({"resources": dict(resources)} if resources else {})}


def build_settings(args: AppArgs | dict | None) -> Settings:
    """config/serve.yaml's ``args:``, validated, as the deployments' settings. Reads the key and
    webhook-secret files (creating them on first start) and prints where the keys come from."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args or {})
    if args.http_proxy == "haproxy" and os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        print("http_proxy: haproxy is applied by qwen-serve when it starts the cluster; this cluster serves "
              "through the proxy it was started with (start it with RAY_SERVE_ENABLE_HA_PROXY=1)", flush=True)
    presets = build_registry(args.presets)
    default = resolve(presets, args.default_preset).name if args.default_preset else None
    keyring, key_message = load_keyring(args.path(args.api_key_file, "api_key"),
                                        keys_file=args.api_keys_file and args.path(args.api_keys_file, ""))
    print(key_message, flush=True)
    hooks, w = args.webhooks, args.worker
    secret = load_secret(args.path(hooks.secret_file, "webhook_secret")) if hooks.allowed_hosts else None
    actor_options = {"num_gpus": w.num_gpus, "num_cpus": w.num_cpus}
    if w.resources:
        actor_options["resources"] = dict(w.resources)
    preload = default if default and missing_weights(presets[default]) is None else None
    return Settings(
        presets=presets, default_preset=default, max_queue_size=args.max_queue_size,
        cleanup_age_seconds=args.cleanup_age_seconds, load_timeout_seconds=args.load_timeout_seconds,
        job_lease_seconds=args.job_lease_seconds, max_images=args.max_images, internal_calls=args.internal_calls,
        output_policy=args.output_policy.policy(),
        queue=QueueSettings(
            results_dir=str(args.path(args.results_dir, "results")), jobs_db=str(args.path(None, "jobs.sqlite3")),
            scheduling=args.scheduling, max_jobs_per_station=args.max_jobs_per_station,
            priority_max_passes=args.priority_max_passes, preset_affinity=args.preset_affinity,
            webhook_secret=secret, webhook_retry_seconds=hooks.retry_seconds,
            webhook_timeout_seconds=hooks.timeout_seconds, graceful_stop_seconds=args.graceful_stop_seconds,
            min_free_disk_mb=args.min_free_disk_mb, actor_options=_pinned(args.queue_resources)),
        worker=WorkerSettings(
            models_dir=str(args.path(args.models_dir, "models")), device=w.device, torch_threads=w.torch_threads,
            png_compress_level=w.png_compress_level, attention_backend=w.attention_backend, compile=w.compile,
            warmup=w.warmup, preload=preload, profile=w.profile, gpu_memory_gib=w.gpu_memory_gib,
            plan_presets=planned_presets(presets, default), prepare_ahead=w.prepare_ahead, engine=w.engine,
            num_replicas=w.num_replicas, autoscaling=w.autoscaling, actor_options=actor_options),
        ingress=IngressSettings(
            replicas=args.ingress_replicas, actor_options=_pinned(args.ingress_resources),
            upload_limits=args.upload_limits,
            max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_instruction_chars=args.max_instruction_chars,
            max_system_prompt_chars=args.max_system_prompt_chars, prompt_policy=args.prompt_policy.policy(),
            edit_timeout_seconds=args.edit_timeout_seconds, keys=keyring.entries, rate_limit=args.rate_limit,
            webhook_allowed_hosts=tuple(hooks.allowed_hosts),
            upload_dir=str(args.path(None, "uploads"))),
    )
