"""A request-body bound enforced while the body streams in, not after it has been buffered.

A declared ``Content-Length`` over the bound is refused before anything is read. Without one (chunked
uploads, or a lying header) the bytes are counted as they arrive and reading stops at the bound:
FastAPI re-raises ``HTTPException`` from its body parser as is, so the client gets the 413 below.
"""

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MB = 1024 * 1024


def _too_large(limit: int, size: int | None) -> str:
    got = f" ({size / MB:.1f}MB)" if size is not None else ""
    return (f"Request body too large{got}. Maximum {limit / MB:g}MB per request; "
            "the image itself may be at most the upload limit.")


class BodySizeLimit:
    """``max_bytes`` is read per request from ``app.state.max_body_bytes`` when set (the ingress sets
    it from config/serve.yaml at start), else the constructor's default."""

    def __init__(self, app: ASGIApp, max_bytes: int = 32 * MB):
        self.app = app
        self.default_max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = getattr(scope.get("app"), "state", None)
        max_bytes = getattr(state, "max_body_bytes", self.default_max)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await JSONResponse({"detail": "Invalid Content-Length header."}, 400)(scope, receive, send)
                return
            if size > max_bytes:
                await JSONResponse({"detail": _too_large(max_bytes, size)}, 413,
                                   headers={"Connection": "close"})(scope, receive, send)
                return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise HTTPException(413, _too_large(max_bytes, None))
            return message

        await self.app(scope, bounded_receive, send)
