"""HTTP ingress (FastAPI on Ray Serve) and the typed app builder that ``serve run`` calls.

    HTTP -> Ingress (N replicas) -> QueueActor (1 replica) <- ModelWorker (N replicas, pull)

The ingress validates everything a station sends (auth, form fields, image) before the queue sees
it, maps the ``ApiError`` family to HTTP in one place, and never answers with a traceback or a
server path. Note: no ``from __future__ import annotations`` here; it breaks FastAPI's form
parameters under ``@serve.ingress``.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import secrets
import tempfile
import uuid
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, Path, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from fastapi.sse import format_sse_event
from ray import serve
from ray.exceptions import RayError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from . import __version__
from .auth import Caller, Keyring, load_keyring
from .config import AppArgs, IngressSettings, QueueSettings, WorkerSettings
from .errors import (ApiError, BadRequest, EditTimeout, JobNotFound, ServiceUnavailable, Unauthorized,
                     Unprocessable)
from .events import TERMINAL, JobEvents
from .http_limits import BodySizeLimit
from .images import check_size, check_upload
from .model_actor import ModelWorker
from .presets import build_registry, missing_weights, resolve
from .protocol import JobRequest
from .queue_actor import QueueActor, api_error_of, signature
from .schemas import (ErrorBody, HealthResponse, JobListResponse, JobStatusResponse, LoadModelResponse,
                      ModelsResponse, QueueResponse, SubmitResponse)
from .webhooks import check_url, load_secret

log = logging.getLogger("ray.serve")
API = "/api/v1"
PUBLIC_PATHS = frozenset({"/", f"{API}/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
QUICK_CALL_S = 15.0  # a queue call that is not a long poll answers within milliseconds
MAX_SEED = 2**64 - 1
MAX_IDEMPOTENCY_KEY = 255
HEARTBEAT_S = 10.0  # the events stream sends a comment at least this often when nothing changes

# What each error status means; every route documents exactly the ones it can answer (checked by
# Schemathesis in tests/integration/test_schema_fuzz.py).
WHY = {
    400: "The request is invalid (a bad image, an unknown preset, an empty or too long instruction, "
         "...); the detail says what to fix.",
    401: "X-API-Key is missing or not a key of this server.",
    404: "No such job: it never existed here, was cleaned up after its TTL, or is another station's.",
    409: "The job is already completed or failed: there is nothing to cancel.",
    413: "The request body, or one image, is larger than this server accepts.",
    422: "A required field is missing or a value is malformed (a seed that is not a whole number, ...).",
    429: "The queue, or this station's share of it, is full; retry after Retry-After seconds.",
    503: "The job queue or the model workers are not available right now; retry in a few seconds.",
    504: "The job did not finish within edit_timeout_seconds; the X-Job-Id header names it: poll its status.",
}


EXAMPLE = {  # one real answer per status, shown in /docs
    400: "Invalid image format: the file is an HTML document. Must be JPEG or PNG",
    401: "Invalid or missing API key",
    404: "Job 3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f not found. It may have been cleaned up "
         "(jobs are kept for 1 hour after completion).",
    409: "Job 3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f is already completed; only queued or processing jobs "
         "can be cancelled.",
    413: "Request body too large (50.0MB). Maximum 32MB per request; the image itself may be at most the "
         "upload limit.",
    422: "Invalid request: 'instruction' is required: say what to change in the image.",
    429: "Queue is full (maximum 10 jobs). Please try again later.",
    503: "The job queue is not reachable right now (it may be restarting). Try again in a few seconds.",
    504: "The edit is still processing after 600s; poll /api/v1/status/3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f "
         "for it.",
}
HEADERS = {
    401: {"WWW-Authenticate": {"description": "names the header to send", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds until a slot should be free", "schema": {"type": "integer"}}},
}


SSE_EXAMPLE = ('event: status\ndata: {"job_id": "3f0c...", "status": "queued", "position": 1, ...}\n\n'
               'event: status\ndata: {"job_id": "3f0c...", "status": "processing", "step": 0, ...}\n\n'
               'event: progress\ndata: {"job_id": "3f0c...", "status": "processing", "step": 2, "progress": 0.5, ...}\n\n'
               ': heartbeat\n\n'
               'event: completed\ndata: {"job_id": "3f0c...", "status": "completed", "result_path": "...", ...}\n\n')
EDIT_JSON_EXAMPLE = {"job_id": "3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f", "status": "completed",
                     "result_path": "qwen-4step_20261128_090005_s42_3f0c2d8e.png", "seed": 42,
                     "preset": "qwen-4step", "run_seconds": 1.8, "...": "the other status fields"}


def errors(*codes: int, **why: str) -> dict:
    """OpenAPI ``responses`` for these error statuses, each with its meaning and an example answer
    (``e409="..."`` overrides a description)."""
    return {code: {"model": ErrorBody, "description": why.get(f"e{code}", WHY[code]),
                   "content": {"application/json": {"example": {"detail": EXAMPLE[code]}}},
                   **({"headers": HEADERS[code]} if code in HEADERS else {})} for code in codes}

app = FastAPI(
    title="Qwen Image Edit API",
    version=__version__,
    description="Instruction-based image editing behind a job queue. Send `X-API-Key` on every "
                "route except `/`, `/api/v1/health` and the docs.",
)
app.add_middleware(BodySizeLimit)
# The stations' web page (plain HTML, CSS and JS; it asks for the key and calls the API like any client).
app.mount("/ui", StaticFiles(directory=str(pathlib.Path(__file__).parent / "ui"), html=True), name="ui")


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
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":  # no such route: say so in a sentence
        detail = f"No such route: {request.method} {request.url.path[:200]}. The routes are listed at /docs."
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path[:200]}. The routes are listed at /docs."
        # Starlette names only the first matching route's methods; GET and DELETE on one path are two
        # routes. Ask the router which methods would match this path.
        allowed = [m for m in ("DELETE", "GET", "PATCH", "POST", "PUT")
                   if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in request.app.router.routes)]
        return JSONResponse({"detail": detail}, status_code=405, headers={"Allow": ", ".join(allowed)})
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


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

# Declared as an API-key security scheme so /docs offers "Authorize" and clients see which routes need it;
# auto_error=False: a missing key is our own 401 with a sentence, not FastAPI's 403.
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="your station's API key")


def require_key(request: Request, key: Annotated[str | None, Security(API_KEY)] = None) -> Caller:
    keyring: Keyring | None = getattr(request.app.state, "keyring", None)
    caller = keyring.identify(key) if keyring is not None else None
    if caller is None:
        raise Unauthorized()
    return caller


Authed = [Depends(require_key)]
JobId = Annotated[str, Path(description="the job_id submit answered",
                            examples=["3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f"])]
CallerDep = Annotated[Caller, Depends(require_key)]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="same key + same request: the same job, never a second one")]


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
        instruction: Annotated[str | None, Form(description="what to change, at most 500 characters",
                                                examples=["make the sky blue"])] = None,
        seed: Annotated[str | None, Form(description="integer; random when left out", examples=["42"])] = None,
        system_prompt: Annotated[str | None, Form(description="optional text put before the instruction")] = None,
        preset: Annotated[str | None, Form(description="qwen-4step, qwen-8step, qwen-40step, tiny, or an alias",
                                           examples=["qwen-4step"])] = None,
        model: Annotated[str | None, Form(description="older name of the preset field")] = None,
        webhook_url: Annotated[str | None, Form(
            description="optional: POSTed the job's status when it ends (hosts on the server's allow-list)")] = None,
    ):
        self.images = [f for f in [*(image or []), image2, image3] if f is not None]
        self.instruction, self.seed = instruction, seed
        self.system_prompt, self.preset, self.model = system_prompt, preset, model
        self.webhook_url = webhook_url


Form_ = Annotated[EditForm, Depends()]


FEED = Caller("ingress-events", admin=True)  # the shared per-job feed; each listener was checked first


def _event_name(view: dict, last: dict | None) -> str:
    """The SSE event type: the final state's name, else what changed since the last event."""
    if view["status"] in TERMINAL:
        return view["status"]
    if last is None or view["status"] != last["status"]:
        return "status"
    if view["position"] != last["position"]:
        return "position"
    return "progress"


def harden_form_decoding() -> None:
    """Starlette decodes a form field that is not valid UTF-8 as Latin-1, which would turn broken
    bytes into plausible text. Decode such bytes with ``surrogateescape`` instead, so that
    ``_check_text`` can refuse them with a sentence. (Called in each ingress replica's process.)"""
    import starlette.formparsers as formparsers

    def decode(src, codec):
        try:
            return src.decode(codec)
        except (LookupError, UnicodeDecodeError):
            return bytes(src).decode("utf-8", "surrogateescape")

    if hasattr(formparsers, "_user_safe_decode"):
        formparsers._user_safe_decode = decode


def _check_text(what: str, text: str) -> None:
    """Plain text only: no control characters (newlines and tabs are fine) and no undecodable bytes."""
    if any((ord(c) < 32 and c not in "\n\r\t") or c == "\x7f" for c in text):
        raise BadRequest(f"{what} contains control characters; send plain text (newlines and tabs are fine).")
    if any(0xD800 <= ord(c) <= 0xDFFF or c == "\ufffd" for c in text):
        raise BadRequest(f"{what} is not valid UTF-8 text; send it encoded as UTF-8.")


def _check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise BadRequest(f"Invalid Idempotency-Key: use 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters "
                         "(a UUID is a good choice).")
    return key


def _fingerprint(images: list[bytes], instruction: str, form: EditForm, webhook_url: str | None) -> str:
    """What makes two requests 'the same' for an Idempotency-Key: every field as sent."""
    h = hashlib.sha256()
    for data in images:
        h.update(hashlib.sha256(data).digest())
    for value in (instruction, form.seed, form.preset, form.model, form.system_prompt, webhook_url):
        h.update(b"\x00" + (value or "").strip().encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _openapi() -> dict:
    """FastAPI's schema, with its automatic 422 made true: every 422 here is ``{"detail": "<sentence>"}``
    (see ``_validation_error``), and routes whose only input is the job id in the path never answer 422."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for operation in (op for ops in schema["paths"].values() for op in ops.values()):
            auto = operation["responses"].get("422")
            if not auto or "HTTPValidationError" not in json.dumps(auto):
                continue
            if "requestBody" not in operation and all(p["in"] == "path" for p in operation.get("parameters", [])):
                del operation["responses"]["422"]
            else:
                operation["responses"]["422"] = {
                    "description": WHY[422],
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"},
                                                     "example": {"detail": EXAMPLE[422]}}}}
        for unused in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi


# --- the ingress deployment (note: helpers it calls must be defined above it: serve.ingress pickles
# the FastAPI app with the module globals as they are at that point) ----------------------------------

@serve.deployment(max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress(app)
class Ingress:
    def __init__(self, queue: DeploymentHandle, workers: DeploymentHandle, settings: IngressSettings):
        self.queue = queue
        self.workers = workers  # part of the app graph so Serve deploys the workers
        self.s = settings
        app.state.keyring = Keyring(settings.keys)
        app.state.max_body_bytes = settings.max_body_bytes
        if settings.upload_dir:  # multipart spools big files to the temp folder: keep them in the state folder
            os.makedirs(settings.upload_dir, exist_ok=True)
            tempfile.tempdir = settings.upload_dir
        harden_form_decoding()
        self.events = JobEvents(self._watch, signature, HEARTBEAT_S)

    async def _watch(self, job_id: str, last: tuple | None, timeout: float) -> dict | None:
        return await self._call("watch", job_id, FEED, last, timeout, timeout=timeout + QUICK_CALL_S)

    async def _call(self, method: str, *args, timeout: float = QUICK_CALL_S):
        try:
            return await asyncio.wait_for(getattr(self.queue, method).remote(*args), timeout)
        except Exception as exc:
            err = api_error_of(exc)
            if err is not None:
                raise err from None
            raise

    async def _validated(self, form: EditForm, caller: Caller, idempotency_key: str | None) -> dict:
        """The job's fields, checked; or ``{"existing": view}`` for an idempotent retry."""
        if not form.images:
            raise Unprocessable("Invalid request: 'image' is required: attach the picture as a file field named image.")
        if len(form.images) > self.s.max_images:
            raise BadRequest(f"Too many images ({len(form.images)}). A job takes at most {self.s.max_images}.")
        if form.instruction is None:
            raise Unprocessable("Invalid request: 'instruction' is required: say what to change in the image.")
        instruction = form.instruction.strip()
        if not instruction:
            raise BadRequest("Instruction is empty: say what to change in the image.")
        _check_text("Instruction", instruction)
        if form.system_prompt:
            _check_text("System prompt", form.system_prompt)
        if len(instruction) > self.s.max_instruction_chars:
            raise BadRequest(f"Instruction too long ({len(instruction)} chars). "
                             f"Maximum {self.s.max_instruction_chars} characters.")
        limit = self.s.max_system_prompt_chars
        if form.system_prompt is not None and len(form.system_prompt) > limit:
            raise BadRequest(f"System prompt too long ({len(form.system_prompt)} chars). Maximum {limit} characters.")
        preset = None
        if form.preset or form.model:
            chosen = [resolve(self.s.presets, n).name for n in (form.preset, form.model) if n]
            if len(set(chosen)) > 1:
                raise BadRequest(f"preset ({form.preset}) and model ({form.model}) name different presets; "
                                 "send only preset.")
            preset = chosen[0]
        webhook_url = check_url(form.webhook_url, self.s.webhook_allowed_hosts) if form.webhook_url else None
        seed = _parse_seed(form.seed)  # before the fingerprint: a bad seed is a 422, not a new key use
        for f in form.images:  # the parser spooled each file to disk: refuse an oversize one unread
            if f.size is not None:
                check_size(f.size, self.s.upload_limits)
        data = [await f.read() for f in form.images]
        fingerprint = None
        if idempotency_key is not None:
            fingerprint = _fingerprint(data, instruction, form, webhook_url)
            existing = await self._call("find_idempotent", caller, idempotency_key, fingerprint)
            if existing is not None:  # a retry: its job, whatever the queue's occupancy
                return {"existing": existing}
        await self._call("check_room", caller)  # a full queue refuses before the images are decoded
        for one in data:
            await asyncio.to_thread(check_upload, one, self.s.upload_limits)
        return {"images": data, "instruction": instruction, "seed": seed, "preset": preset,
                "system_prompt": form.system_prompt or None, "fingerprint": fingerprint,
                "webhook_url": webhook_url}

    async def _submit(self, form: EditForm, caller: Caller, idempotency_key: str | None,
                      job_id: str | None = None) -> tuple[dict, bool]:
        """(the job's view, created now); an idempotent retry gets the earlier job and False."""
        idempotency_key = _check_idempotency_key(idempotency_key)
        job = await self._validated(form, caller, idempotency_key)
        if "existing" in job:
            return job["existing"], False
        job_id = job_id or str(uuid.uuid4())
        request = JobRequest(job_id, job["images"], job["instruction"], job["seed"], job["preset"],
                             job["system_prompt"], idempotency_key, job["fingerprint"], job["webhook_url"])
        return await self._call("submit", request, caller)

    # --- public routes ---

    @app.get("/", tags=["info"], responses={200: {"content": {"application/json": {"example": {
        "name": "Qwen Image Edit API", "version": __version__, "docs": "/docs", "redoc": "/redoc",
        "endpoints": {"submit": f"{API}/submit", "status": f"{API}/status/{{job_id}}", "...": "..."}}}}}})
    async def index(self) -> dict:
        return {
            "name": "Qwen Image Edit API", "version": __version__, "docs": "/docs", "redoc": "/redoc",
            "endpoints": {
                "health": f"{API}/health", "models": f"{API}/models", "load_model": f"{API}/load-model",
                "submit": f"{API}/submit", "status": f"{API}/status/{{job_id}}",
                "result": f"{API}/status/{{job_id}}/result", "queue": f"{API}/queue", "edit": f"{API}/edit",
                "events": f"{API}/status/{{job_id}}/events", "cancel": f"DELETE {API}/status/{{job_id}}",
                "jobs": f"{API}/jobs", "ui": "/ui/",
            },
        }

    @app.get(f"{API}/health", response_model=HealthResponse, tags=["info"], responses={503: {
        "model": HealthResponse,
        "description": "degraded: the queue is not reachable, or no model worker can run (see warnings)"}})
    async def health(self):
        try:
            h = await self._call("health", timeout=5.0)
        except Exception:
            body = {"status": "degraded", "warnings": ["The job queue is not reachable."], "current_model": None,
                    "model_loaded": False, "is_loading": False, "is_generating": False, "queue_max_size": self.s.max_queue_size,
                    "queue_cleanup_age_seconds": self.s.cleanup_age_seconds, "workers": []}
            return JSONResponse(body, status_code=503)
        unusable = any(w["state"] == "unusable" for w in h["workers"])
        status = "healthy" if h["model_loaded"] and not unusable else ("degraded" if h["warnings"] else "starting")
        return {"status": status, **h}

    # --- keyed routes ---

    @app.get(f"{API}/models", response_model=ModelsResponse, dependencies=Authed, responses=errors(401, 503),
             tags=["models"])
    async def models(self):
        h = await self._call("health")
        models = {}
        for name, p in self.s.presets.items():
            missing = missing_weights(p)
            models[name] = {**p.public(), "available": missing is None, "missing": missing}
        return {"models": models, "default": h["current_model"],
                "note": "Use a name (or an alias such as 4-step) as `preset` on submit/edit or `model` on "
                        "load-model. Presets with available=false need their weights on the server first."}

    @app.post(f"{API}/load-model", response_model=LoadModelResponse, dependencies=Authed, tags=["models"],
              responses=errors(400, 401, 409, 422, 503, e400="Unknown preset, or its weights are not on this server.",
                               e409="Another model load is running; try again when it finishes."))
    async def load_model(self, model: Annotated[str, Query(description="preset name or alias",
                                                           examples=["qwen-8step"])]):
        return await self._call("load_model", model, timeout=self.s.load_timeout_seconds + QUICK_CALL_S)

    @app.post(f"{API}/submit", response_model=SubmitResponse, responses=errors(400, 401, 413, 422, 429, 503),
              tags=["jobs"])
    async def submit(self, form: Form_, response: Response, caller: CallerDep,
                     idempotency_key: IdempotencyKey = None):
        view, created = await self._submit(form, caller, idempotency_key)
        response.headers["X-Job-Id"] = view["job_id"]
        position = view["position"]
        if created:
            message = f"Job queued successfully. Position: {position}" if position else "Job queued successfully."
        else:
            response.headers["Idempotent-Replayed"] = "true"
            message = "This Idempotency-Key was already used for this same request: this is that job."
        return {"job_id": view["job_id"], "status": view["status"], "position": position, "message": message,
                "estimated_wait_seconds": view["estimated_wait_seconds"]}

    @app.get(f"{API}/status/{{job_id}}", response_model=JobStatusResponse, responses=errors(401, 404, 503),
             tags=["jobs"])
    async def status(self, job_id: JobId, caller: CallerDep):
        return await self._call("status", job_id, caller)

    @app.delete(f"{API}/status/{{job_id}}", response_model=JobStatusResponse, responses=errors(401, 404, 409, 503),
                tags=["jobs"],
                summary="Cancel a job")
    async def cancel(self, job_id: JobId, caller: CallerDep):
        """A queued job never runs; a running one stops within one denoising step. Cancelling a
        finished job answers 409; cancelling twice is harmless."""
        return await self._call("cancel", job_id, caller)

    @app.post(f"{API}/status/{{job_id}}/cancel", response_model=JobStatusResponse, responses=errors(401, 404, 409, 503),
              tags=["jobs"], summary="Cancel a job (for clients that cannot send DELETE)")
    async def cancel_post(self, job_id: JobId, caller: CallerDep):
        return await self._call("cancel", job_id, caller)

    @app.get(f"{API}/status/{{job_id}}/events", tags=["jobs"], summary="Live job events (Server-Sent Events)",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"example": SSE_EXAMPLE}},
                              "description": "events `status`, `position`, `progress`, then one of "
                                             "`completed`, `failed`, `cancelled`; data is the status JSON"},
                        **errors(401, 404, 503)})
    async def events(self, job_id: JobId, caller: CallerDep):
        """The job's state changes, position changes and per-step progress as they happen, then its
        final status; a comment line at least every 10 s keeps proxies from closing the stream."""
        first = await self._call("status", job_id, caller)  # 404 now (also another station's job)

        async def stream():
            last = None
            try:
                # One queue watch per job in this replica, shared by all of the job's listeners;
                # aclosing: a client that goes away leaves the feed at once, not at garbage collection.
                async with contextlib.aclosing(self.events.subscribe(job_id, first)) as views:
                    async for view in views:
                        if view is None:
                            yield format_sse_event(comment="heartbeat")
                            continue
                        yield format_sse_event(event=_event_name(view, last), data_str=json.dumps(view))
                        last = view
            except Exception as exc:  # the job expired while followed, or the queue went away
                err = api_error_of(exc)
                detail = err.detail if err else "The job queue is not reachable right now; reconnect shortly."
                yield format_sse_event(event="error", data_str=json.dumps({"detail": detail}))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(f"{API}/status/{{job_id}}/result", tags=["jobs"], response_class=Response,
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the result PNG; headers X-Job-Id, X-Seed, X-Preset, X-Result-Name"},
                        **errors(401, 404, 503, e404="No such job (see status), or it has no result: it is "
                                                     "not completed, or its file is gone.")})
    async def result(self, job_id: JobId, caller: CallerDep):
        name, data, view = await self._call("result", job_id, caller)
        return self._png(name, data, view)

    @app.get(f"{API}/queue", response_model=QueueResponse, dependencies=Authed, responses=errors(401, 503),
             tags=["jobs"])
    async def queue_stats(self):
        return await self._call("queue_stats")

    @app.get(f"{API}/jobs", response_model=JobListResponse, responses=errors(401, 422, 503), tags=["jobs"],
             summary="This station's recent jobs")
    async def jobs(self, caller: CallerDep,
                   limit: Annotated[int, Query(ge=1, le=100, description="at most this many", examples=[20])] = 20):
        """The calling station's jobs still on the server (finished ones stay for the cleanup age),
        newest first; an admin key sees every station's."""
        return {"jobs": await self._call("station_jobs", caller, limit)}

    @app.post(f"{API}/edit", tags=["jobs"],
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                           "application/json": {"example": EDIT_JSON_EXAMPLE}},
                               "description": "the result PNG (headers X-Job-Id, X-Seed, X-Preset), or with "
                                              "return_image=false the job's status JSON"},
                         **errors(400, 401, 413, 422, 429, 503, 504,
                                  e503="The queue or workers are not available, or the edit failed (the detail "
                                       "says why).")})
    async def edit(self, form: Form_, caller: CallerDep, idempotency_key: IdempotencyKey = None,
                   return_image: Annotated[str | None, Form()] = None):
        """Submit and wait (up to edit_timeout_seconds) in one call. A client that disconnects
        while waiting cancels its job."""
        want_image = _parse_bool(return_image, "return_image", True)
        job_id = str(uuid.uuid4())  # known before the queue is called, so a disconnect can name it
        timeout = self.s.edit_timeout_seconds
        try:
            view, _ = await self._submit(form, caller, idempotency_key, job_id)
            job_id = view["job_id"]  # an idempotent retry's earlier job
            view = await self._call("wait", job_id, timeout, caller, timeout=timeout + QUICK_CALL_S)
        except asyncio.CancelledError:  # Serve cancels the request when its client goes away,
            # possibly while the submit is still on its way to the queue
            asyncio.get_running_loop().create_task(self._cancel_abandoned(job_id, caller))
            raise
        headers = {"X-Job-Id": job_id}
        if view["status"] == "failed":
            raise ServiceUnavailable(f"The edit failed: {view['error']}", headers)
        if view["status"] != "completed":
            raise EditTimeout(f"The edit is still {view['status']} after {timeout:g}s; "
                              f"poll {API}/status/{job_id} for it.", headers)
        if not want_image:
            return JSONResponse({**view, "seed": view["result_seed"], "preset": view["model"]}, headers=headers)
        name, data, view = await self._call("result", job_id, caller)
        return self._png(name, data, view)

    async def _cancel_abandoned(self, job_id: str, caller: Caller) -> None:
        """Cancel the job of an /edit whose client went away, until the queue answers: cancelled,
        finished meanwhile (409), or still unknown after a few seconds (its submit never reached the
        queue). While the queue is away (a restart) the cancel waits with backoff, for up to
        ``edit_timeout_seconds``, rather than letting an abandoned job run."""
        loop = asyncio.get_running_loop()
        deadline, unknown, delay = loop.time() + self.s.edit_timeout_seconds, 0, 0.5
        while True:
            try:
                await self._call("cancel", job_id, caller)
                log.info("[Ingress] /edit client went away: job %s cancelled", job_id[:8])
                return
            except JobNotFound:
                unknown += 1
                if unknown >= 10:
                    log.info("[Ingress] /edit client went away before its job %s was queued", job_id[:8])
                    return
                await asyncio.sleep(0.5)
            except Exception as exc:
                if isinstance(exc, ApiError) and exc.status_code != 503:  # finished meanwhile (409)
                    log.info("[Ingress] /edit client went away; job %s not cancelled: %s", job_id[:8], exc)
                    return
                if loop.time() > deadline:  # 503 or a Ray error: the queue replica is away (restarting)
                    log.warning("[Ingress] /edit client went away; job %s could not be cancelled: the queue "
                                "stayed away", job_id[:8])
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

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
                          preload=preload, profile=w.profile, gpu_memory_gib=w.gpu_memory_gib,
                          plan_presets=planned_presets(presets, default), max_images=args.max_images,
                          prepare_ahead=w.prepare_ahead, engine=w.engine, job_lease_seconds=args.job_lease_seconds)


def planned_presets(presets: dict, default: str | None) -> tuple:
    """The presets a worker's ``auto`` profile must fit: those in the worker's profile that share the
    default preset's base (all of them when there is no default); LoRA and working area vary among them."""
    own = [p for p in presets.values() if p.profile is None]
    if default is not None and presets[default].profile is None:
        own = [p for p in own if p.base == presets[default].base]
    return tuple(own)


def app_settings(args: AppArgs) -> tuple[QueueSettings, WorkerSettings, IngressSettings, dict]:
    """What each deployment is built with, from config/serve.yaml's ``args:``: the queue's, the
    workers', the ingress's settings, and the workers' Ray actor options."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args or {})
    presets = build_registry(args.presets)
    default = resolve(presets, args.default_preset).name if args.default_preset else None
    keyring, key_message = load_keyring(args.path(args.api_key_file, "api_key"),
                                        keys_file=args.api_keys_file and args.path(args.api_keys_file, ""))
    print(key_message, flush=True)
    hooks = args.webhooks
    secret = load_secret(args.path(hooks.secret_file, "webhook_secret")) if hooks.allowed_hosts else None
    w = args.worker
    actor_options = {"num_gpus": w.num_gpus, "num_cpus": w.num_cpus}
    if w.resources:
        actor_options["resources"] = dict(w.resources)
    queue = QueueSettings(
        max_queue_size=args.max_queue_size, cleanup_age_seconds=args.cleanup_age_seconds,
        results_dir=str(args.path(args.results_dir, "results")), jobs_db=str(args.path(None, "jobs.sqlite3")),
        presets=presets,
        default_preset=default, load_timeout_seconds=args.load_timeout_seconds,
        worker_resources={"CPU": w.num_cpus, "GPU": w.num_gpus, **w.resources},
        scheduling=args.scheduling, max_jobs_per_station=args.max_jobs_per_station,
        webhook_secret=secret, webhook_retry_seconds=hooks.retry_seconds,
        webhook_timeout_seconds=hooks.timeout_seconds, graceful_stop_seconds=args.graceful_stop_seconds,
        min_free_disk_mb=args.min_free_disk_mb, job_lease_seconds=args.job_lease_seconds,
    )
    ingress = IngressSettings(
        upload_limits=args.upload_limits, max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_instruction_chars=args.max_instruction_chars, max_system_prompt_chars=args.max_system_prompt_chars,
        edit_timeout_seconds=args.edit_timeout_seconds,
        load_timeout_seconds=args.load_timeout_seconds,
        keys=keyring.entries, webhook_allowed_hosts=tuple(hooks.allowed_hosts), presets=presets,
        cleanup_age_seconds=args.cleanup_age_seconds, max_queue_size=args.max_queue_size,
        upload_dir=str(args.path(None, "uploads")),
    )
    return queue, worker_settings(args, presets, default), ingress, actor_options


def build_app(args: AppArgs):
    """Build the Serve application from config/serve.yaml's ``args:`` (validated as ``AppArgs``)."""
    if not isinstance(args, AppArgs):
        args = AppArgs.model_validate(args or {})
    queue_settings, worker, ingress, actor_options = app_settings(args)
    queue = QueueActor.bind(queue_settings)
    workers = ModelWorker.options(num_replicas=args.worker.num_replicas, ray_actor_options=actor_options).bind(
        queue, worker)
    return Ingress.options(num_replicas=args.ingress_replicas).bind(queue, workers, ingress)
