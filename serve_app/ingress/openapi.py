"""The OpenAPI document's text: what each error status means, one real answer per status, the
examples, and FastAPI's automatic 422 made true. Every route documents exactly the statuses it can
answer (``errors``)."""

import json

from fastapi import FastAPI

from .schemas import ErrorBody

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


def with_true_422(app: FastAPI):
    """FastAPI's schema, with its automatic 422 made true: every 422 here is ``{"detail": "<sentence>"}``
    (see ``http_errors.validation_error``), and routes whose only input is the job id in the path never answer 422."""
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
