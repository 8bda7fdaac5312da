"""The raw-body guards (``serve_app.ingress.http_limits``), on a bare ASGI app that reads the form as FastAPI does."""

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve_app.ingress.http_limits import UNDECODABLE, BodySizeLimit, TextFieldCheck

BOUNDARY = "b0undary"


async def echo(request: Request):
    form = await request.form()
    return JSONResponse({"fields": sorted(k for k, v in form.items() if isinstance(v, str)),
                         "undecodable": sorted(getattr(request.state, UNDECODABLE, ()))})


def app(max_bytes: int = 1 << 20):
    inner = Starlette(routes=[Route("/", echo, methods=["POST"])])
    return BodySizeLimit(TextFieldCheck(inner), max_bytes=max_bytes)


def multipart(*parts: tuple[str, bytes, str | None]) -> bytes:
    body = b""
    for name, data, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def post(body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}", max_bytes: int = 1 << 20,
         chunks: int = 1):
    async def main():
        async def stream():
            step = max(1, len(body) // chunks)
            for i in range(0, len(body), step):
                yield body[i:i + step]

        transport = httpx.ASGITransport(app=app(max_bytes))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            content = stream() if chunks > 1 else body
            return await client.post("/", content=content, headers={"Content-Type": content_type})
    return asyncio.run(main())


def test_text_fields_that_are_not_utf8_are_named_and_files_are_not_checked():
    body = multipart(("instruction", b"make it \xff\xfe blue", None), ("seed", b"42", None),
                     ("image", b"\x89PNG\xff\xfe binary", "a.png"), ("preset", "über".encode(), None))
    r = post(body)
    assert r.status_code == 200
    assert r.json() == {"fields": ["instruction", "preset", "seed"], "undecodable": ["instruction"]}


def test_a_field_split_across_many_chunks_is_checked_whole():
    # "ü" is two bytes: a chunk boundary inside it must not look like broken text
    body = multipart(("instruction", "über ".encode() * 200, None), ("system_prompt", b"\xc3", None))
    assert post(body, chunks=97).json()["undecodable"] == ["system_prompt"]


def test_a_declared_charset_is_respected():
    body = multipart(("instruction", "café".encode("latin-1"), None))
    assert post(body, f"multipart/form-data; charset=latin-1; boundary={BOUNDARY}").json()["undecodable"] == []
    assert post(body).json()["undecodable"] == ["instruction"]


def test_bodies_over_the_bound_get_413_declared_or_streamed():
    body = multipart(("instruction", b"x" * 5000, None))
    r = post(body, max_bytes=1000)
    assert r.status_code == 413 and "Request body too large (0.0MB)" in r.json()["detail"]
    r = post(body, max_bytes=1000, chunks=10)  # no Content-Length: counted as it arrives, reading stops
    assert r.status_code == 413 and "Request body too large. Maximum" in r.text
