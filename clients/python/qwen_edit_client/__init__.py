"""The stations' client for the Qwen Image Edit API: ``Client`` (typed answers, safe retries) and the
``qwen-edit`` command. Installs alone (httpx, httpx-sse, pydantic, tqdm): no torch, no Ray."""

from .client import (ApiError, BadRequest, Client, Conflict, ConnectionFailed, EditTimeout, Forbidden, Invalid,
                     JobFailed, NotFound, QueueFull, TooLarge, Unauthorized, Unavailable)
from .models import (TERMINAL, HealthResponse, JobListResponse, JobStatus, JobStatusResponse, ModelsResponse,
                     QueueResponse, SubmitResponse)

__version__ = "0.3.0"
__all__ = ["ApiError", "BadRequest", "Client", "Conflict", "ConnectionFailed", "EditTimeout", "Forbidden", "Invalid",
           "JobFailed", "NotFound", "QueueFull", "TooLarge", "Unauthorized", "Unavailable", "TERMINAL",
           "HealthResponse", "JobListResponse", "JobStatus", "JobStatusResponse", "ModelsResponse", "QueueResponse",
           "SubmitResponse"]
