"""Issue 5, hostile input: malicious and malformed requests all get a 4xx with a sentence, never a
5xx, a traceback or a server path; the server keeps serving."""

import io
import socket

import pytest
from PIL import Image

from tests.helpers import IMAGE, bomb_png, plain_png, replica_process, replica_rss

pytestmark = pytest.mark.integration


def clean(r):
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and len(detail) > 10
    for leak in ("Traceback", "/tmp", "site-packages", "/work", "File \""):
        assert leak not in r.text
    return detail


def apng() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>x()</script></svg>'


@pytest.mark.parametrize("name, data, fragment", [
    ("apng", apng(), "animated"),
    ("animated-gif", animated_gif(), "GIF"),
    ("svg", SVG, "Must be JPEG or PNG"),
    ("script", b"#!/bin/sh\nrm -rf /\n", "Must be JPEG or PNG"),
    ("html", b"<html><body onload=alert(1)></body></html>", "Must be JPEG or PNG"),
    ("empty", b"", "empty"),
])
def test_hostile_files_named_png(api, name, data, fragment):
    r = api.http.post("/api/v1/submit", files={"image": (f"{name}.png", data, "image/png")},
                      data={"instruction": "x"})
    assert fragment in clean(r)


@pytest.mark.parametrize("instruction, fragment", [
    ("make it \x00blue", "control characters"),
    ("ring \x07 the bell", "control characters"),
    ("x" * 10_000, "Instruction too long"),
])
def test_hostile_instructions(api, instruction, fragment):
    r = api.http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": instruction})
    assert fragment in clean(r)


def test_invalid_utf8_instruction(api):
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\n").encode() + \
        b"make it \xff\xfe blue" + (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                                   f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + \
        IMAGE + f"\r\n--{boundary}--\r\n".encode()
    r = api.http.post("/api/v1/submit", content=body,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "not valid UTF-8" in clean(r)


def test_newlines_and_unicode_in_instructions_are_fine(api):
    r = api.http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": "make the sky blue\nand add a 🌈 — über"})
    assert r.status_code == 200, r.text
    api.wait(r.json()["job_id"])


@pytest.mark.parametrize("seed", [str(2**64), "99999999999999999999999999", "1e9", "0x10", "1.5"])
def test_seeds_beyond_64_bits_or_not_integers(api, seed):
    r = api.http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": "x", "seed": seed})
    assert r.status_code == 422 and "seed" in clean(r)


def test_a_thousand_form_fields(api):
    data = {f"f{i}": "x" for i in range(1000)}
    r = api.http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": "x", **data})
    clean(r)


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "a%00b", "%00", "x" * 10_000,
                                    "{job_id}", "' OR 1=1 --",
                                    "C021EEDD-D4A4-4814-8817-E8E9B8AF7B1B"])  # a well-formed id in upper case
def test_hostile_job_ids(api, job_id):
    for path in ("", "/result", "/events"):
        r = api.http.get(f"/api/v1/status/{job_id}{path}")
        assert r.status_code in (404, 414), (job_id[:40], path, r.status_code)
        if r.status_code == 404 and r.headers.get("content-type", "").startswith("application/json"):
            clean(r)
    r = api.http.delete(f"/api/v1/status/{job_id}")
    assert r.status_code in (404, 405, 414)


def test_spoofed_content_length_cannot_smuggle_a_big_body(api):
    host, port = api.base.removeprefix("http://").split("/")[0].split(":")
    boundary = "sp00f"
    head = (f"POST /api/v1/submit HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {api.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1024\r\n"
            f"Connection: close\r\n\r\n").encode()
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + part)
        sent = len(part)
        try:
            while sent < 50 * 1024 * 1024:
                s.sendall(b"\0" * 65536)
                sent += 65536
        except OSError:
            pass  # the server stopped reading after the declared 1024 bytes and closed: fine
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except OSError:
            pass
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
    assert status is None or 400 <= status < 500, reply[:300]
    assert api.http.get("/api/v1/health").status_code == 200  # still serving


def test_result_is_png_with_nosniff(api):
    job_id = api.submit(IMAGE, seed=9).json()["job_id"]
    api.wait(job_id)
    r = api.http.get(f"/api/v1/status/{job_id}/result")
    assert r.headers["content-type"] == "image/png" and r.headers["x-content-type-options"] == "nosniff"


def test_memory_stays_bounded_under_repeated_hostile_uploads(api):
    """Twenty rounds of the heaviest refusals (a 30000x30000 PNG bomb, a 15 MB upload, a 50 MB chunked
    body, 1,000 form fields): nothing is queued, the queue replica does not grow, and the ingress
    replica's memory levels off (bounded, not a leak: the last five rounds add almost nothing).

    Measured here: the ingress levels off about 150-330 MB above its start after 10-15 rounds; the
    growth is in passing the big bodies from Serve's proxy to the replica (it happens even when the
    upload is refused by its size, unread), not in the service's own handling."""

    bomb, big = bomb_png(30000, 30000), b"\x89PNG" + b"\0" * (15 * 1024 * 1024)
    fields = {f"f{i}": "x" * 100 for i in range(1000)}

    def chunked():
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(50 * 16):
            yield b"\0" * 65536

    def round_of_refusals():
        r = api.http.post("/api/v1/submit", files={"image": ("a.png", bomb)}, data={"instruction": "x"})
        assert r.status_code == 400 and "dimensions too large" in clean(r)
        r = api.http.post("/api/v1/submit", files={"image": ("a.png", big)}, data={"instruction": "x"})
        assert r.status_code == 400 and "Image too large (15.0MB)" in clean(r)
        r = api.http.post("/api/v1/submit", content=chunked(),
                          headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413, r.text
        clean(api.http.post("/api/v1/submit", files={"image": ("a.png", plain_png(3000, 3000))},
                            data={"instruction": "x", **fields}))

    api.drain()
    queue_before = replica_rss("main", "QueueActor")
    ingress = [replica_rss("main", "Ingress")]
    for _ in range(20):
        round_of_refusals()
        ingress.append(replica_rss("main", "Ingress"))
    mb = [round((x - ingress[0]) / 2**20) for x in ingress]
    print("ingress memory above its start, per round (MB):", mb)
    assert max(mb) < 512, mb
    # levelled off: the last five rounds reach at most a little above the peak before them (the
    # allocator gives memory back and takes it again, so one round's figure goes up and down)
    assert max(mb[-5:]) - max(mb[:-5]) < 48, mb
    assert (replica_rss("main", "QueueActor") - queue_before) / 2**20 < 16
    assert api.http.get("/api/v1/queue").json()["queue_size"] == 0


def test_uploads_are_spooled_inside_the_state_folder(api):
    """A big upload is spooled to a file while the request is read: in <state_dir>/uploads, not the
    system's temp folder, and gone afterwards (seen from the ingress process's open files)."""
    import os
    import time


    ingress = replica_process("main", "Ingress")
    open_files = []

    def body():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        yield b"\0" * (3 * 2**20)  # past the 1 MB kept in memory
        time.sleep(1.5)  # the server has it spooled now, and is waiting for the rest
        open_files.extend(os.readlink(f"/proc/{ingress.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{ingress.pid}/fd"))
        yield b'\r\n--b\r\nContent-Disposition: form-data; name="instruction"\r\n\r\nx\r\n--b--\r\n'

    r = api.http.post("/api/v1/submit", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    clean(r)  # not a picture: 400
    uploads = str(api.state.resolve() / "uploads")
    spooled = [f for f in open_files if f.startswith(uploads)]
    assert spooled, [f for f in open_files if f.startswith("/")]
    assert os.listdir(uploads) == []  # nothing left behind

