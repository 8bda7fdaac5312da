"""What the routes share: the station's key check (with this replica's share of the rate limit), the
job id in the path, the Idempotency-Key header, the edit form of /submit and /edit, and the replica's
``EditService``. ``make_app`` puts the service and the key check on ``app.state``; the routes reach
them through these dependencies, so every router is a plain module-level ``APIRouter``."""

import asyncio
from typing import Annotated

from fastapi import Depends, File, Form, Header, Path, Request, Security, UploadFile
from fastapi.security import APIKeyHeader

from ..auth import Caller, Keyring
from ..config import Settings
from ..errors import RateLimited, Unauthorized
from .forms import EditFields
from .http_limits import UNDECODABLE
from .ratelimit import RateLimiter
from .service import EditService

API = "/api/v1"
RATE_LIMIT_PAUSE_S = 1.0  # how long a refused request (429 over the rate limit) is held before the answer


class KeyCheck:
    """Who a key belongs to, and whether that station is over its rate limit in this replica."""

    def __init__(self, settings: Settings):
        self.keyring = Keyring(settings.ingress.keys)
        self.limit = limit = settings.ingress.rate_limit
        # Serve spreads requests over the ingress replicas: each enforces its share of the app's limit.
        share = settings.ingress.replicas
        self.limiter = limit and RateLimiter(limit.requests_per_second / share, max(1.0, limit.burst / share))

    async def __call__(self, key: str | None) -> Caller:
        caller = self.keyring.identify(key)
        if caller is None:
            raise Unauthorized()
        if self.limiter and (wait := self.limiter.take(caller.station)):
            # Answered after RATE_LIMIT_PAUSE_S (the shortest Retry-After anyway): a client that
            # ignores Retry-After gets one refusal a second per connection, not as many as it can send.
            await asyncio.sleep(RATE_LIMIT_PAUSE_S)
            raise RateLimited(caller.station, self.limit.requests_per_second, self.limit.burst, wait)
        return caller


# Declared as an API-key security scheme so /docs offers "Authorize" and clients see which routes need it;
# auto_error=False: a missing key is our own 401 with a sentence, not FastAPI's 403.
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="your station's API key")


async def require_key(request: Request, key: Annotated[str | None, Security(API_KEY)] = None) -> Caller:
    # async: FastAPI would run a plain function in its thread pool, a thread hop per request.
    return await request.app.state.key_check(key)


def the_service(request: Request) -> EditService:
    return request.app.state.service


CallerDep = Annotated[Caller, Depends(require_key)]
ServiceDep = Annotated[EditService, Depends(the_service)]
KEYED = [Depends(require_key)]  # a route that needs a key but not the caller

JobId = Annotated[str, Path(description="the job_id submit answered",
                            examples=["3f0c2d8e-7d1a-4c55-9d4e-1b2a3c4d5e6f"])]
IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", description="same key + same request: the same job, never a second one")]


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
