"""HTTP ingress (FastAPI on Ray Serve) and the typed app builder that ``serve run`` calls.

    HTTP -> Ingress (N replicas) -> QueueActor (1 replica) <- ModelWorker (N replicas, pull)

The ingress validates everything a station sends (auth, form fields, image) before the queue sees
it, maps the ``ApiError`` family to HTTP in one place, and never answers with a traceback or a
server path. Note: no ``from __future__ import annotations`` here; it breaks FastAPI's form
parameters under ``@serve.ingress``.
"""

import asyncio
import logging
import secrets
import uuid
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .auth import Keyring, load_keyring
from .config import AppArgs, IngressSettings, QueueSettings, WorkerSettings
from .errors import (ApiError, BadRequest, EditTimeout, ServiceUnavailable, Unauthorized, Unprocessable)
from .http_limits import BodySizeLimit
from .images import check_upload
from .model_actor import ModelWorker
from .presets import build_registry, missing_weights, resolve
from .queue_actor import QueueActor, api_error_of
from .schemas import (ErrorBody, HealthResponse, JobStatusResponse, LoadModelResponse, ModelsResponse,
                      QueueResponse, SubmitResponse)

log = logging.getLogger("ray.serve")
API = "/api/v1"
PUBLIC_PATHS = frozenset({"/", f"{API}/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
QUICK_CALL_S = 15.0  # a queue call that is not a long poll answers within milliseconds
MAX_SEED = 2**64 - 1

ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 422, 429, 503, 504)}

app = FastAPI(
    title="Qwen Image Edit API",
    version=__version__,
    description="Instruction-based image editing behind a job queue. Send `X-API-Key` on every "
                "route except `/`, `/api/v1/health` and the docs.",
)
app.add_middleware(BodySizeLimit)


# --- errors: mapped once, here ---------------------------------------------------------------------

def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)


@app.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError):
    return _error_response(exc)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    parts = []
    for e in exc.errors():
        field = ".".join(str(x) for x in e.get("loc", ())[1:] if not isinstance(x, int)) or "request"
        msg = e.get("msg", "is invalid")
        if e.get("type") == "missing":
            msg = "is required"
        elif "UploadFile" in msg:
            msg = "must be a file upload, not a text field"
        parts.append(f"'{field}' {msg[0].lower() + msg[1:]}")
    return JSONResponse({"detail": "Invalid request: " + "; ".join(parts) + "."}, status_code=422)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception):
    err = api_error_of(exc)
    if err is not None:
        return _error_response(err)
    if isinstance(exc, (RayError, asyncio.TimeoutError)):
        log.warning("queue call failed: %r", exc)
        return JSONResponse({"detail": "The job queue is not reachable right now (it may be restarting). "
                                       "Try again in a few seconds."}, status_code=503)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "Internal server error."}, status_code=500)


# --- auth ------------------------------------------------------------------------------------------

def require_key(request: Request) -> None:
    keyring: Keyring | None = getattr(request.app.state, "keyring", None)
    if keyring is None or not keyring.check(request.headers.get("x-api-key")):
        raise Unauthorized()


Authed = [Depends(require_key)]


# --- form parsing ----------------------------------------------------------------------------------

def _parse_seed(raw: str | None) -> int:
    if raw is None or raw.strip() == "":
        return secrets.randbelow(2**32)
    try:
        seed = int(raw.strip())
    except ValueError:
        raise Unprocessable(f"Invalid seed {raw[:40]!r}: send a whole number from 0 to {MAX_SEED}, "
                            "or leave it out for a random one.") from None
    if not 0 <= seed <= MAX_SEED:
        raise Unprocessable(f"Invalid seed {seed}: it must be between 0 and {MAX_SEED}.")
    return seed


def _parse_bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise Unprocessable(f"Invalid {name} {raw[:20]!r}: send true or false.")


class EditForm:
    """The multipart form shared by /submit and /edit."""

    def __init__(
        self,
        image: Annotated[list[UploadFile] | None, File(
            description="JPEG or PNG, at most 10MB and 2048x2048; repeat the field for up to 3 images")] = None,
        image2: Annotated[UploadFile | None, File(description="optional second image")] = None,
        image3: Annotated[UploadFile | None, File(description="optional third image")] = None,
        instruction: Annotated[str | None, Form(description="what to change, at most 500 characters")] = None,
        seed: Annotated[str | None, Form(description="integer; random when left out")] = None,
        system_prompt: Annotated[str | None, Form(description="optional text put before the instruction")] = None,
        preset: Annotated[str | None, Form(description="qwen-4step, qwen-8step, qwen-40step, tiny, or an alias")] = None,
        model: Annotated[str | None, Form(description="older name of the preset field")] = None,
    ):
        self.images = [f for f in [*(image or []), image2, image3] if f is not None]
        self.instruction, self.seed = instruction, seed
        self.system_prompt, self.preset, self.model = system_prompt, preset, model


Form_ = Annotated[EditForm, Depends()]


# --- the ingress deployment ------------------------------------------------------------------------

@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(self, queue: DeploymentHandle, workers: DeploymentHandle, settings: IngressSettings):
        self.queue = queue
        self.workers = workers  # part of the app graph so Serve deploys the workers
        self.s = settings
        app.state.keyring = Keyring(settings.key_digests)
        app.state.max_body_bytes = settings.max_body_bytes

    async def _call(self, method: str, *args, timeout: float = QUICK_CALL_S):
        try:
            return await asyncio.wait_for(getattr(self.queue, method).remote(*args), timeout)
        except Exception as exc:
            err = api_error_of(exc)
            if err is not None:
                raise err from None
            raise

    async def _validated(self, form: EditForm) -> dict:
        if not form.images:
            raise Unprocessable("Invalid request: 'image' is required: attach the picture as a file field named image.")
        if len(form.images) > self.s.max_images:
            raise BadRequest(f"Too many images ({len(form.images)}). A job takes at most {self.s.max_images}.")
        if form.instruction is None:
            raise Unprocessable("Invalid request: 'instruction' is required: say what to change in the image.")
        instruction = form.instruction.strip()
        if not instruction:
            raise BadRequest("Instruction is empty: say what to change in the image.")
        if len(instruction) > self.s.max_instruction_chars:
            raise BadRequest(f"Instruction too long ({len(instruction)} chars). "
                             f"Maximum {self.s.max_instruction_chars} characters.")
        if form.system_prompt is not None and len(form.system_prompt) > 2000:
            raise BadRequest(f"System prompt too long ({len(form.system_prompt)} chars). Maximum 2000 characters.")
        preset = None
        if form.preset or form.model:
            chosen = [resolve(self.s.presets, n).name for n in (form.preset, form.model) if n]
            if len(set(chosen)) > 1:
                raise BadRequest(f"preset ({form.preset}) and model ({form.model}) name different presets; "
                                 "send only preset.")
            preset = chosen[0]
        seed = _parse_seed(form.seed)
        await self._call("check_room")  # a full queue refuses before the images are decoded
        data = [await f.read() for f in form.images]
        for one in data:
            await asyncio.to_thread(check_upload, one, self.s.upload_limits)
        return {"images": data, "instruction": instruction, "seed": seed, "preset": preset,
                "system_prompt": form.system_prompt or None}

    async def _submit(self, form: EditForm) -> dict:
        job = await self._validated(form)
        job_id = str(uuid.uuid4())
        return await self._call("submit", job_id, job["images"], job["instruction"], job["seed"],
                                job["preset"], job["system_prompt"])

    # --- public routes ---

    @app.get("/", tags=["info"])
    async def index(self) -> dict:
        return {
            "name": "Qwen Image Edit API", "version": __version__, "docs": "/docs", "redoc": "/redoc",
            "endpoints": {
                "health": f"{API}/health", "models": f"{API}/models", "load_model": f"{API}/load-model",
                "submit": f"{API}/submit", "status": f"{API}/status/{{job_id}}",
                "result": f"{API}/status/{{job_id}}/result", "queue": f"{API}/queue", "edit": f"{API}/edit",
            },
        }

    @app.get(f"{API}/health", response_model=HealthResponse, tags=["info"], responses={503: {"model": HealthResponse}})
    async def health(self):
        try:
            h = await self._call("health", timeout=5.0)
        except Exception:
            body = {"status": "degraded", "warnings": ["The job queue is not reachable."], "current_model": None,
                    "model_loaded": False, "is_loading": False, "is_generating": False, "queue_max_size": self.s.max_queue_size,
                    "queue_cleanup_age_seconds": self.s.cleanup_age_seconds, "workers": []}
            return JSONResponse(body, status_code=503)
        status = "healthy" if h["model_loaded"] else ("degraded" if h["warnings"] else "starting")
        return {"status": status, **h}

    # --- keyed routes ---

    @app.get(f"{API}/models", response_model=ModelsResponse, dependencies=Authed, responses=ERRORS, tags=["models"])
    async def models(self):
        h = await self._call("health")
        models = {}
        for name, p in self.s.presets.items():
            missing = missing_weights(p)
            models[name] = {**p.public(), "available": missing is None, "missing": missing}
        return {"models": models, "default": h["current_model"],
                "note": "Use a name (or an alias such as 4-step) as `preset` on submit/edit or `model` on "
                        "load-model. Presets with available=false need their weights on the server first."}

    @app.post(f"{API}/load-model", response_model=LoadModelResponse, dependencies=Authed, responses=ERRORS,
              tags=["models"])
    async def load_model(self, model: Annotated[str, Query(description="preset name or alias")]):
        return await self._call("load_model", model, timeout=self.s.load_timeout_seconds + QUICK_CALL_S)

    @app.post(f"{API}/submit", response_model=SubmitResponse, dependencies=Authed, responses=ERRORS, tags=["jobs"])
    async def submit(self, form: Form_, response: Response):
        view = await self._submit(form)
        response.headers["X-Job-Id"] = view["job_id"]
        position = view["position"]
        message = f"Job queued successfully. Position: {position}" if position else "Job queued successfully."
        return {"job_id": view["job_id"], "status": "queued", "position": position, "message": message,
                "estimated_wait_seconds": view["estimated_wait_seconds"]}

    @app.get(f"{API}/status/{{job_id}}", response_model=JobStatusResponse, dependencies=Authed,
             responses=ERRORS, tags=["jobs"])
    async def status(self, job_id: str):
        return await self._call("status", job_id)

    @app.get(f"{API}/status/{{job_id}}/result", dependencies=Authed, tags=["jobs"],
             responses={200: {"content": {"image/png": {}}}, **ERRORS})
    async def result(self, job_id: str):
        name, data, view = await self._call("result", job_id)
        return self._png(name, data, view)

    @app.get(f"{API}/queue", response_model=QueueResponse, dependencies=Authed, responses=ERRORS, tags=["jobs"])
    async def queue_stats(self):
        return await self._call("queue_stats")

    @app.post(f"{API}/edit", dependencies=Authed, tags=["jobs"],
              responses={200: {"content": {"image/png": {}, "application/json": {}}}, **ERRORS})
    async def edit(self, form: Form_, return_image: Annotated[str | None, Form()] = None):
        want_image = _parse_bool(return_image, "return_image", True)
        view = await self._submit(form)
        job_id = view["job_id"]
        timeout = self.s.edit_timeout_seconds
        view = await self._call("wait", job_id, timeout, timeout=timeout + QUICK_CALL_S)
        headers = {"X-Job-Id": job_id}
        if view["status"] == "failed":
            raise ServiceUnavailable(f"The edit failed: {view['error']}", headers)
        if view["status"] != "completed":
            raise EditTimeout(f"The edit is still {view['status']} after {timeout:g}s; "
                              f"poll {API}/status/{job_id} for it.", headers)
        if not want_image:
            return JSONResponse({**view, "seed": view["result_seed"], "preset": view["model"]}, headers=headers)
        name, data, view = await self._call("result", job_id)
        return self._png(name, data, view)

    @staticmethod
    def _png(name: str, data: bytes, view: dict) -> Response:
        return Response(content=data, media_type="image/png", headers={
            "Content-Disposition": f'inline; filename="{name}"', "X-Content-Type-Options": "nosniff",
            "X-Job-Id": view["job_id"], "X-Seed": str(view["result_seed"]), "X-Model": view["model"],
            "X-Preset": view["model"], "X-Result-Name": name,
        })


# --- the typed app builder -------------------------------------------------------------------------

def worker_settings(args: AppArgs, presets: dict, default: str | None) -> WorkerSettings:
    """What each model worker is built with: the YAML's ``worker:`` block plus the preset to preload."""
    w = args.worker
    preload = presets[default] if default and missing_weights(presets[default]) is None else None
    return WorkerSettings(models_dir=str(args.path(args.models_dir, "models")), device=w.device,
                          torch_threads=w.torch_threads, png_compress_level=w.png_compress_level,
                          attention_backend=w.attention_backend, compile=w.compile, warmup=w.warmup,
                          preload=preload)


def build_app(args: AppArgs):
    """Build the Serve application from config/serve.yaml's ``args:`` (validated as ``AppArgs``)."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args or {})
    presets = build_registry(args.presets)
    default = resolve(presets, args.default_preset).name if args.default_preset else None
    keyring, key_message = load_keyring(args.path(args.api_key_file, "api_key"))
    print(key_message, flush=True)

    w = args.worker
    actor_options = {"num_gpus": w.num_gpus, "num_cpus": w.num_cpus}
    if w.resources:
        actor_options["resources"] = dict(w.resources)
    queue = QueueActor.bind(QueueSettings(
        max_queue_size=args.max_queue_size, cleanup_age_seconds=args.cleanup_age_seconds,
        results_dir=str(args.path(args.results_dir, "results")), presets=presets,
        default_preset=default, load_timeout_seconds=args.load_timeout_seconds,
        worker_resources={"CPU": w.num_cpus, "GPU": w.num_gpus, **w.resources},
    ))
    workers = ModelWorker.options(num_replicas=w.num_replicas, ray_actor_options=actor_options).bind(
        queue, worker_settings(args, presets, default))
    return Ingress.options(num_replicas=args.ingress_replicas).bind(queue, workers, IngressSettings(
        upload_limits=args.upload_limits, max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_instruction_chars=args.max_instruction_chars, edit_timeout_seconds=args.edit_timeout_seconds,
        load_timeout_seconds=args.load_timeout_seconds,
        key_digests=keyring.digests, presets=presets, cleanup_age_seconds=args.cleanup_age_seconds,
        max_queue_size=args.max_queue_size,
    ))
