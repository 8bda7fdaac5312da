"""Guards on the raw request body, applied while it streams in, before FastAPI parses it.

``BodySizeLimit``: a declared ``Content-Length`` over the bound is refused before anything is read.
Without one (chunked uploads, or a lying header) the bytes are counted as they arrive and reading
stops at the bound: FastAPI re-raises ``HTTPException`` from its body parser as is, so the client
gets the 413 below.

``TextFieldCheck``: Starlette decodes a multipart text field that is not valid in the request's
charset as Latin-1, which turns broken bytes into plausible text that no later check could tell
from real text. This middleware reads the multipart body as it passes (python-multipart's streaming
parser, nothing buffered but the text fields themselves) and records the names of the text fields
that do not decode, so request validation can refuse them with a sentence.
"""

import codecs

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MB = 1024 * 1024
# Where TextFieldCheck leaves its finding: scope["state"][UNDECODABLE] is the set of field names
# (Starlette's ``request.state.undecodable_fields``).
UNDECODABLE = "undecodable_fields"
_TEXT_PART_MAX = MB  # Starlette refuses a text part over 1 MB anyway (max_part_size)


def _too_large(limit: int, size: int | None) -> str:
    got = f" ({size / MB:.1f}MB)" if size is not None else ""
    return (f"Request body too large{got}. Maximum {limit / MB:g}MB per request; "
            "the image itself may be at most the upload limit.")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int = 32 * MB):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.max_bytes
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


class _TextParts:
    """python-multipart callbacks that keep each text part's bytes and check them at its end."""

    def __init__(self, codec: str, undecodable: set[str]):
        self.codec, self.undecodable = codec, undecodable
        self.header_name, self.header_value = b"", b""
        self.name: str | None = None  # the current part's field name; None for a file part
        self.data = bytearray()

    def on_part_begin(self) -> None:
        self.name, self.data = None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            _, options = parse_options_header(self.header_value)
            if b"filename" not in options and b"name" in options:
                self.name = options[b"name"].decode("latin-1")
        self.header_name, self.header_value = b"", b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.name is not None and len(self.data) < _TEXT_PART_MAX:
            self.data += data[start:end]

    def on_part_end(self) -> None:
        if self.name is not None:
            try:
                codecs.decode(bytes(self.data), self.codec)
            except UnicodeDecodeError:
                self.undecodable.add(self.name)

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in ("on_part_begin", "on_header_field", "on_header_value",
                                                        "on_header_end", "on_part_data", "on_part_end")}


class TextFieldCheck:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"") if scope["type"] == "http" else b""
        kind, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            await self.app(scope, receive, send)
            return
        try:  # the charset Starlette decodes with: the declared one, UTF-8 when none
            codec = codecs.lookup(params.get(b"charset", b"utf-8").decode("latin-1")).name
        except LookupError:  # Starlette falls back to Latin-1, which decodes anything
            await self.app(scope, receive, send)
            return
        undecodable: set[str] = set()
        scope.setdefault("state", {})[UNDECODABLE] = undecodable
        parser: MultipartParser | None = MultipartParser(boundary, _TextParts(codec, undecodable).callbacks())

        async def checked_receive() -> Message:
            nonlocal parser
            message = await receive()
            if parser is not None and message["type"] == "http.request":
                try:
                    parser.write(message.get("body", b""))
                except Exception:  # a malformed body: Starlette's own parser answers it with a 400
                    parser = None
            return message

        await self.app(scope, checked_receive, send)
