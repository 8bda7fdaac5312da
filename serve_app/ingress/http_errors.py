"""Errors become HTTP answers here, and only here: the ``ApiError`` family with its status, detail and
headers; FastAPI's validation errors as one sentence naming each field; a route that does not exist or
a method it does not take, in a sentence with the methods it does; a queue replica that is away as 503;
anything else as a 500 with no traceback and no server path in the answer (the log has it)."""

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import ApiError, api_error_of

log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    """The handlers, on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


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
