"""The stations' routes for jobs: submit, status, cancel, the events stream, previews, the result, the
queue, this station's jobs, and the blocking /edit. Each translates HTTP to one ``EditService`` call."""

import asyncio
import base64
import contextlib
import json
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.sse import format_sse_event

from ...contract.protocol import JobView
from ...errors import ApiError, api_error_of
from ..forms import parse_bool
from ..openapi import EDIT_JSON_EXAMPLE, SSE_EXAMPLE, errors
from ..params import API, KEYED, CallerDep, EditForm, IdempotencyKey, JobId, ServiceDep
from ..schemas import JobListResponse, JobStatusResponse, QueueResponse, SubmitResponse

DISCONNECT_POLL_S = 0.5  # how often a waiting /edit checks that its client is still there
router = APIRouter()


@router.post(f"{API}/submit", response_model=SubmitResponse, responses=errors(400, 401, 403, 413, 422, 429, 503),
          tags=["jobs"])
async def submit(service: ServiceDep, form: EditForm, response: Response, caller: CallerDep,
                 idempotency_key: IdempotencyKey = None):
    view, created = await service.submit(form, caller, idempotency_key)
    response.headers["X-Job-Id"] = view.job_id
    if created:
        message = "Job queued successfully." + (f" Position: {view.position}" if view.position else "")
    else:
        response.headers["Idempotent-Replayed"] = "true"
        message = "This Idempotency-Key was already used for this same request: this is that job."
    return {"job_id": view.job_id, "status": view.status, "position": view.position, "message": message,
            "estimated_wait_seconds": view.estimated_wait_seconds}

@router.get(f"{API}/status/{{job_id}}", response_model=JobStatusResponse, responses=errors(401, 404, 503),
         tags=["jobs"])
async def status(service: ServiceDep, job_id: JobId, caller: CallerDep):
    return await service.status(job_id, caller)

@router.delete(f"{API}/status/{{job_id}}", response_model=JobStatusResponse,
            responses=errors(401, 404, 409, 503), tags=["jobs"], summary="Cancel a job")
async def cancel(service: ServiceDep, job_id: JobId, caller: CallerDep):
    """A queued job never runs; a running one stops within one denoising step. Cancelling a
    finished job answers 409; cancelling twice is harmless."""
    return await service.cancel(job_id, caller)

@router.post(f"{API}/status/{{job_id}}/cancel", response_model=JobStatusResponse,
          responses=errors(401, 404, 409, 503), tags=["jobs"],
          summary="Cancel a job (for clients that cannot send DELETE)")
async def cancel_post(service: ServiceDep, job_id: JobId, caller: CallerDep):
    return await service.cancel(job_id, caller)

@router.get(f"{API}/status/{{job_id}}/events", tags=["jobs"], summary="Live job events (Server-Sent Events)",
         response_class=StreamingResponse,
         responses={200: {"content": {"text/event-stream": {"example": SSE_EXAMPLE}},
                          "description": "events `status`, `position`, `progress`, then one of "
                                         "`completed`, `failed`, `cancelled`; data is the status JSON. "
                                         "Jobs submitted with previews=true also get `preview` events: "
                                         "{job_id, step, image: a data:image/jpeg;base64 URL}"},
                    **errors(401, 404, 503)})
async def events(service: ServiceDep, job_id: JobId, caller: CallerDep):
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

@router.get(f"{API}/status/{{job_id}}/preview", tags=["jobs"], response_class=Response,
         responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                          "description": "the latest live preview (at most 256 px); header X-Step"},
                    **errors(401, 404, 503, e404="No such job, or no preview: submitted without previews=true, "
                                                 "not started yet, or already finished.")})
async def preview(service: ServiceDep, job_id: JobId, caller: CallerDep):
    """The latest live preview of a running job submitted with ``previews=true``."""
    step, jpeg = await service.preview(job_id, caller)
    return Response(content=jpeg, media_type="image/jpeg", headers={
        "X-Job-Id": job_id, "X-Step": str(step), "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

@router.get(f"{API}/status/{{job_id}}/result", tags=["jobs"], response_class=Response,
         responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                          "description": "the result PNG; headers X-Job-Id, X-Seed, X-Preset, X-Result-Name"},
                    **errors(401, 404, 503, e404="No such job (see status), or it has no result: it is "
                                                 "not completed, or its file is gone.")})
async def result(service: ServiceDep, job_id: JobId, caller: CallerDep):
    return _png(*await service.result(job_id, caller))

@router.get(f"{API}/queue", response_model=QueueResponse, dependencies=KEYED, responses=errors(401, 503),
         tags=["jobs"])
async def queue_stats(service: ServiceDep):
    return await service.queue_stats()

@router.get(f"{API}/jobs", response_model=JobListResponse, responses=errors(401, 422, 503), tags=["jobs"],
         summary="This station's recent jobs")
async def jobs(service: ServiceDep, caller: CallerDep,
               limit: Annotated[int, Query(ge=1, le=100, description="at most this many", examples=[20])] = 20):
    """The calling station's jobs still on the server (finished ones stay for the cleanup age),
    newest first; an admin key sees every station's."""
    return {"jobs": await service.jobs(caller, limit)}

@router.post(f"{API}/edit", tags=["jobs"],
          responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                       "application/json": {"example": EDIT_JSON_EXAMPLE}},
                           "description": "the result PNG (headers X-Job-Id, X-Seed, X-Preset), or with "
                                          "return_image=false the job's status JSON"},
                     **errors(400, 401, 403, 413, 422, 429, 503, 504,
                              e503="The queue or workers are not available, or the edit failed (the detail "
                                   "says why).")})
async def edit(service: ServiceDep, request: Request, form: EditForm, caller: CallerDep,
               idempotency_key: IdempotencyKey = None, return_image: Annotated[str | None, Form()] = None):
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
