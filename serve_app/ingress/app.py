"""The HTTP API: ``make_app(service, settings)`` builds the FastAPI app, once in each ingress replica.

Routes are thin: each translates HTTP (form fields, path, headers, the answer's shape and headers)
to one ``EditService`` call. The ``ApiError`` family is mapped to HTTP here and only here; no answer
carries a traceback or a server path. Note: no ``from __future__ import annotations`` in this module;
FastAPI reads the route parameters' annotations as objects.
"""

import asyncio
import base64
import contextlib
import json
import logging
import pathlib
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, Path, Query, Request, Response, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from fastapi.sse import format_sse_event
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..auth import Caller, Keyring
from ..config import Settings
from ..contract.protocol import JobView
from ..errors import ApiError, RateLimited, Unauthorized, api_error_of
from .forms import EditFields, parse_bool
from .http_limits import UNDECODABLE, BodySizeLimit, TextFieldCheck
from .ratelimit import RateLimiter
from .schemas import (ErrorBody, HealthResponse, JobListResponse, JobStatusResponse, LoadModelResponse, ModelsResponse,
                      QueueResponse, SubmitResponse)
from .service import EditService

log = logging.getLogger(__name__)
API = "/api/v1"
PUBLIC_PATHS = frozenset({"/", f"{API}/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
DISCONNECT_POLL_S = 0.5  # how often a waiting /edit checks that its client is still there
RATE_LIMIT_PAUSE_S = 1.0  # how long a refused request (429 over the rate limit) is held before the answer
UI_DIR = pathlib.Path(__file__).parent / "ui"  # the stations' web page: plain HTML, CSS and JS

# What each error status means; every route documents exactly the ones it can answer (checked by
# Schemathesis in tests/integration/test_schema_fuzz.py).
WHY = {
    400: "The request is invalid (a bad image, an unknown preset, an empty or too long instruction, a "
         "prompt with a blocked term, an upload the server's check refuses, ...); the detail says what to fix.",
    401: "X-API-Key is missing or not a key of this server.",
    403: "The key may not ask for this (a priority above the key's).",
    404: "No such job: it never existed here, was cleaned up after its TTL, or is another station's.",
    409: "The job is already completed or failed: there is nothing to cancel.",
    413: "The request body, or one image, is larger than this server accepts.",
    422: "A required field is missing or a value is malformed (a seed that is not a whole number, ...).",
    429: "Too many requests from this station (rate_limit), or the queue or this station's share of it "
         "is full, or the job could not start in time; retry after Retry-After seconds.",
    503: "The job queue or the model workers are not available right now; retry in a few seconds.",
    504: "The job did not finish within edit_timeout_seconds; the X-Job-Id header names it: poll its status.",
}


EXAMPLE = {  # one real answer per status, shown in /docs
    400: "Invalid image format: the file is an HTML document. Must be JPEG or PNG",
    401: "Invalid or missing API key",
    403: "Priority high is higher than this station's key allows (normal); ask for normal or lower, or leave "
         "priority out.",
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
    (``e409="..."`` overrides a description). A route that needs a key (401) can also be rate-limited
    (429)."""
    if 401 in codes and 429 not in codes:
        codes = (*codes, 429)
    return {code: {"model": ErrorBody, "description": why.get(f"e{code}", WHY[code]),
                   "content": {"application/json": {"example": {"detail": EXAMPLE[code]}}},
                   **({"headers": HEADERS[code]} if code in HEADERS else {})} for code in codes}


# --- errors: mapped once, here ---------------------------------------------------------------------

def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)


async def _api_error(request: Request, exc: ApiError):
    return _error_response(exc)


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


async def _unexpected(request: Request, exc: Exception):
    err = api_error_of(exc)
    if err is not None:
        return _error_response(err)
    if _queue_away(exc):
        log.warning("queue call failed: %r", exc)
        return JSONResponse({"detail": "The job queue is not reachable right now (it may be restarting). "
                                       "Try again in a few seconds."}, status_code=503)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "Internal server error."}, status_code=500)


def _queue_away(exc: BaseException) -> bool:
    """A queue call that timed out or that Ray could not deliver (the queue replica is restarting)."""
    if isinstance(exc, asyncio.TimeoutError):
        return True
    try:
        from ray.exceptions import RayError
    except ImportError:  # (a plain server without Ray installed)
        return False
    return isinstance(exc, RayError)


def _openapi_with_true_422(app: FastAPI):
    """FastAPI's schema, with its automatic 422 made true: every 422 here is ``{"detail": "<sentence>"}``
    (see ``_validation_error``), and routes whose only input is the job id in the path never answer 422."""
    def openapi() -> dict:
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
    return openapi


# --- shared route parameters -----------------------------------------------------------------------

JobId = Annotated[str, Path(description="the job_id submit answered",
                            examples=["3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f"])]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="same key + same request: the same job, never a second one")]
# Declared as an API-key security scheme so /docs offers "Authorize" and clients see which routes need it;
# auto_error=False: a missing key is our own 401 with a sentence, not FastAPI's 403.
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="your station's API key")


def edit_form(
    request: Request,
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
    webhook_events: Annotated[str | None, Form(
        description="optional: which events call webhook_url, comma-separated: started, completed, failed, "
                    "cancelled (default: completed, failed, cancelled)", examples=["started,completed"])] = None,
    start_within_seconds: Annotated[str | None, Form(
        description="optional: cancel the job if it has not started within this many seconds (refused with "
                    "429 when the queue already says it would start later)", examples=["30"])] = None,
    deadline_seconds: Annotated[str | None, Form(
        description="optional: cancel the job if it has not finished within this many seconds",
        examples=["120"])] = None,
    cancel_after: Annotated[str | None, Header(
        alias="Cancel-After", description="optional, as Replicate spells it: deadline_seconds as a duration "
                                          "(90s, 5m, 1h30m)")] = None,
    priority: Annotated[str | None, Form(
        description="optional: low, normal or high, at most your key's priority (the default); higher "
                    "starts first", examples=["low"])] = None,
    previews: Annotated[str | None, Form(
        description="optional: true for a live preview after each step (preview events on the events "
                    "stream, and GET .../preview)", examples=["true"])] = None,
) -> EditFields:
    """The multipart form shared by /submit and /edit, as sent."""
    images = [f for f in [*(image or []), image2, image3] if f is not None]
    undecodable = frozenset(getattr(request.state, UNDECODABLE, ()))
    return EditFields(images, instruction, seed, system_prompt, preset, model, webhook_url, webhook_events,
                      start_within_seconds, deadline_seconds, cancel_after, priority, previews, undecodable)


EditForm = Annotated[EditFields, Depends(edit_form)]


def _preview_event(job_id: str, step: int, jpeg: bytes) -> str:
    data = {"job_id": job_id, "step": step, "image": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}
    return format_sse_event(event="preview", data_str=json.dumps(data))


def _event_name(view: JobView, last: JobView | None) -> str:
    """The SSE event type: the final state's name, else what changed since the last event."""
    if view.terminal:
        return view.status.value
    if last is None or view.status != last.status:
        return "status"
    if view.position != last.position:
        return "position"
    return "progress"


def _png(name: str, data: bytes, view: JobView) -> Response:
    return Response(content=data, media_type="image/png", headers={
        "Content-Disposition": f'inline; filename="{name}"', "X-Content-Type-Options": "nosniff",
        "X-Job-Id": view.job_id, "X-Seed": str(view.result_seed), "X-Model": view.model,
        "X-Preset": view.model, "X-Result-Name": name,
    })


INDEX = {
    "name": "Qwen Image Edit API", "version": __version__, "docs": "/docs", "redoc": "/redoc",
    "endpoints": {
        "health": f"{API}/health", "models": f"{API}/models", "load_model": f"{API}/load-model",
        "submit": f"{API}/submit", "status": f"{API}/status/{{job_id}}",
        "result": f"{API}/status/{{job_id}}/result", "preview": f"{API}/status/{{job_id}}/preview",
        "queue": f"{API}/queue", "edit": f"{API}/edit",
        "events": f"{API}/status/{{job_id}}/events", "cancel": f"DELETE {API}/status/{{job_id}}",
        "jobs": f"{API}/jobs", "ui": "/ui/",
    },
}


def make_app(service: EditService, settings: Settings) -> FastAPI:
    """The API over ``service``. Every call builds a new app: nothing is shared between replicas or
    kept at module level."""
    app = FastAPI(
        title="Qwen Image Edit API",
        version=__version__,
        description="Instruction-based image editing behind a job queue. Send `X-API-Key` on every "
                    "route except `/`, `/api/v1/health` and the docs.",
    )
    app.add_middleware(TextFieldCheck)
    app.add_middleware(BodySizeLimit, max_bytes=settings.ingress.max_body_bytes)  # outermost: runs first
    app.mount("/ui", StaticFiles(directory=str(UI_DIR), html=True), name="ui")
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.openapi = _openapi_with_true_422(app)
    keyring = Keyring(settings.ingress.keys)
    limit = settings.ingress.rate_limit
    # Serve spreads requests over the ingress replicas: each enforces its share of the app's limit.
    share = settings.ingress.replicas
    limiter = limit and RateLimiter(limit.requests_per_second / share, max(1.0, limit.burst / share))

    async def require_key(key: Annotated[str | None, Security(API_KEY)] = None) -> Caller:
        # async: FastAPI would run a plain function in its thread pool, a thread hop per request.
        caller = keyring.identify(key)
        if caller is None:
            raise Unauthorized()
        if limiter and (wait := limiter.take(caller.station)):
            # Answered after RATE_LIMIT_PAUSE_S (the shortest Retry-After anyway): a client that
            # ignores Retry-After gets one refusal a second per connection, not as many as it can send.
            await asyncio.sleep(RATE_LIMIT_PAUSE_S)
            raise RateLimited(caller.station, limit.requests_per_second, limit.burst, wait)
        return caller

    CallerDep = Annotated[Caller, Depends(require_key)]
    authed = [Depends(require_key)]

    # --- public routes ---

    @app.get("/", tags=["info"], responses={200: {"content": {"application/json": {"example": {
        "name": "Qwen Image Edit API", "version": __version__, "docs": "/docs", "redoc": "/redoc",
        "endpoints": {"submit": f"{API}/submit", "status": f"{API}/status/{{job_id}}", "...": "..."}}}}}})
    async def index() -> dict:
        return INDEX

    @app.get(f"{API}/health", response_model=HealthResponse, tags=["info"], responses={503: {
        "model": HealthResponse,
        "description": "degraded: the queue is not reachable, or no model worker can run; unhealthy: the job "
                       "database is damaged (see warnings)"}})
    async def health():
        body, reachable = await service.health()
        return body if reachable else JSONResponse(body, status_code=503)

    # --- keyed routes ---

    @app.get(f"{API}/models", response_model=ModelsResponse, dependencies=authed, responses=errors(401, 503),
             tags=["models"])
    async def models():
        return await service.models()

    @app.post(f"{API}/load-model", response_model=LoadModelResponse, dependencies=authed, tags=["models"],
              responses=errors(400, 401, 409, 422, 503, e400="Unknown preset, or its weights are not on this server.",
                               e409="Another model load is running; try again when it finishes."))
    async def load_model(model: Annotated[str, Query(description="preset name or alias", examples=["qwen-8step"])]):
        return await service.load_model(model)

    @app.post(f"{API}/submit", response_model=SubmitResponse, responses=errors(400, 401, 403, 413, 422, 429, 503),
              tags=["jobs"])
    async def submit(form: EditForm, response: Response, caller: CallerDep, idempotency_key: IdempotencyKey = None):
        view, created = await service.submit(form, caller, idempotency_key)
        response.headers["X-Job-Id"] = view.job_id
        if created:
            message = "Job queued successfully." + (f" Position: {view.position}" if view.position else "")
        else:
            response.headers["Idempotent-Replayed"] = "true"
            message = "This Idempotency-Key was already used for this same request: this is that job."
        return {"job_id": view.job_id, "status": view.status, "position": view.position, "message": message,
                "estimated_wait_seconds": view.estimated_wait_seconds}

    @app.get(f"{API}/status/{{job_id}}", response_model=JobStatusResponse, responses=errors(401, 404, 503),
             tags=["jobs"])
    async def status(job_id: JobId, caller: CallerDep):
        return await service.status(job_id, caller)

    @app.delete(f"{API}/status/{{job_id}}", response_model=JobStatusResponse,
                responses=errors(401, 404, 409, 503), tags=["jobs"], summary="Cancel a job")
    async def cancel(job_id: JobId, caller: CallerDep):
        """A queued job never runs; a running one stops within one denoising step. Cancelling a
        finished job answers 409; cancelling twice is harmless."""
        return await service.cancel(job_id, caller)

    @app.post(f"{API}/status/{{job_id}}/cancel", response_model=JobStatusResponse,
              responses=errors(401, 404, 409, 503), tags=["jobs"],
              summary="Cancel a job (for clients that cannot send DELETE)")
    async def cancel_post(job_id: JobId, caller: CallerDep):
        return await service.cancel(job_id, caller)

    @app.get(f"{API}/status/{{job_id}}/events", tags=["jobs"], summary="Live job events (Server-Sent Events)",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"example": SSE_EXAMPLE}},
                              "description": "events `status`, `position`, `progress`, then one of "
                                             "`completed`, `failed`, `cancelled`; data is the status JSON. "
                                             "Jobs submitted with previews=true also get `preview` events: "
                                             "{job_id, step, image: a data:image/jpeg;base64 URL}"},
                        **errors(401, 404, 503)})
    async def events(job_id: JobId, caller: CallerDep):
        """The job's state changes, position changes and per-step progress as they happen, then its
        final status; a comment line at least every 10 s keeps proxies from closing the stream."""
        _, views = await service.follow(job_id, caller)  # 404 now (also another station's job)

        async def stream():
            last, shown = None, 0  # shown: the step of the last preview sent
            try:
                # aclosing: a client that goes away leaves the job's feed at once, not at garbage collection.
                async with contextlib.aclosing(views):
                    async for view in views:
                        if view is None:
                            yield format_sse_event(comment="heartbeat")
                            continue
                        if last is None or view.terminal or view.status_signature() != last.status_signature():
                            yield format_sse_event(event=_event_name(view, last), data_str=json.dumps(view.as_dict()))
                        if (view.preview_step is not None and not view.terminal
                                and (last is None or view.preview_step != last.preview_step)):
                            try:
                                step, jpeg = await service.preview(job_id, caller)
                                # The route has the latest preview, which may be newer than the view
                                # that announced it: the next view would announce the same one again.
                                if step > shown:
                                    shown = step
                                    yield _preview_event(job_id, step, jpeg)
                            except ApiError:
                                pass  # it ended meanwhile: its final event follows
                        last = view
            except Exception as exc:  # the job expired while followed, or the queue went away
                err = api_error_of(exc)
                detail = err.detail if err else "The job queue is not reachable right now; reconnect shortly."
                yield format_sse_event(event="error", data_str=json.dumps({"detail": detail}))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(f"{API}/status/{{job_id}}/preview", tags=["jobs"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the latest live preview (at most 256 px); header X-Step"},
                        **errors(401, 404, 503, e404="No such job, or no preview: submitted without previews=true, "
                                                     "not started yet, or already finished.")})
    async def preview(job_id: JobId, caller: CallerDep):
        """The latest live preview of a running job submitted with ``previews=true``."""
        step, jpeg = await service.preview(job_id, caller)
        return Response(content=jpeg, media_type="image/jpeg", headers={
            "X-Job-Id": job_id, "X-Step": str(step), "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @app.get(f"{API}/status/{{job_id}}/result", tags=["jobs"], response_class=Response,
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the result PNG; headers X-Job-Id, X-Seed, X-Preset, X-Result-Name"},
                        **errors(401, 404, 503, e404="No such job (see status), or it has no result: it is "
                                                     "not completed, or its file is gone.")})
    async def result(job_id: JobId, caller: CallerDep):
        return _png(*await service.result(job_id, caller))

    @app.get(f"{API}/queue", response_model=QueueResponse, dependencies=authed, responses=errors(401, 503),
             tags=["jobs"])
    async def queue_stats():
        return await service.queue_stats()

    @app.get(f"{API}/jobs", response_model=JobListResponse, responses=errors(401, 422, 503), tags=["jobs"],
             summary="This station's recent jobs")
    async def jobs(caller: CallerDep,
                   limit: Annotated[int, Query(ge=1, le=100, description="at most this many", examples=[20])] = 20):
        """The calling station's jobs still on the server (finished ones stay for the cleanup age),
        newest first; an admin key sees every station's."""
        return {"jobs": await service.jobs(caller, limit)}

    @app.post(f"{API}/edit", tags=["jobs"],
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                           "application/json": {"example": EDIT_JSON_EXAMPLE}},
                               "description": "the result PNG (headers X-Job-Id, X-Seed, X-Preset), or with "
                                              "return_image=false the job's status JSON"},
                         **errors(400, 401, 403, 413, 422, 429, 503, 504,
                                  e503="The queue or workers are not available, or the edit failed (the detail "
                                       "says why).")})
    async def edit(request: Request, form: EditForm, caller: CallerDep, idempotency_key: IdempotencyKey = None,
                   return_image: Annotated[str | None, Form()] = None):
        """Submit and wait (up to edit_timeout_seconds) in one call. A client that disconnects
        while waiting cancels its job."""
        want_image = parse_bool(return_image, "return_image", True)
        # Serve cancels a request whose client went away, but not always the code serving it (seen
        # in about one run in four): so look for the disconnect too, and cancel the edit ourselves.
        work = asyncio.ensure_future(service.edit(form, caller, idempotency_key))
        try:
            while not (await asyncio.wait({work}, timeout=DISCONNECT_POLL_S))[0]:
                if await request.is_disconnected():
                    work.cancel()
                    break
            view = await work
        except asyncio.CancelledError:
            work.cancel()
            raise
        if not want_image:
            return JSONResponse({**view.as_dict(), "seed": view.result_seed, "preset": view.model},
                                headers={"X-Job-Id": view.job_id})
        return _png(*await service.result(view.job_id, caller))

    return app
