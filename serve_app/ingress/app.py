"""The HTTP API: ``make_app(service, settings)`` builds the FastAPI app, once in each ingress replica.

Routes are thin (``routes.info``, ``routes.jobs``): each translates HTTP (form fields, path, headers,
the answer's shape and headers) to one ``EditService`` call. The ``ApiError`` family is mapped to
HTTP in ``http_errors`` and only there; no answer carries a traceback or a server path. The
OpenAPI document's text is in ``openapi``. Note: no ``from __future__ import annotations`` in the
route modules; FastAPI reads the route parameters' annotations as objects.
"""

import pathlib

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..config import Settings
from . import http_errors, openapi
from .http_limits import BodySizeLimit, TextFieldCheck
from .params import API, KeyCheck
from .routes import info, jobs
from .service import EditService

PUBLIC_PATHS = frozenset({"/", f"{API}/health", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
UI_DIR = pathlib.Path(__file__).parent / "ui"  # the stations' web page: plain HTML, CSS and JS


def make_app(service: EditService, settings: Settings) -> FastAPI:
    """The API over ``service``. Every call builds a new app: nothing is shared between replicas or
    kept at module level (the service and the key check live on ``app.state``)."""
    app = FastAPI(
        title="Qwen Image Edit API",
        version=__version__,
        description="Instruction-based image editing behind a job queue. Send `X-API-Key` on every "
                    "route except `/`, `/api/v1/health` and the docs.",
    )
    app.state.service = service
    app.state.key_check = KeyCheck(settings)
    app.add_middleware(TextFieldCheck)
    app.add_middleware(BodySizeLimit, max_bytes=settings.ingress.max_body_bytes)  # outermost: runs first
    app.mount("/ui", StaticFiles(directory=str(UI_DIR), html=True), name="ui")
    http_errors.install(app)
    app.openapi = openapi.with_true_422(app)
    app.include_router(info.router)
    app.include_router(jobs.router)
    return app
