"""Every endpoint of the contract against the real Serve app on the tiny model."""

import io
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_app.ingress.app import PUBLIC_PATHS
from tests.helpers import IMAGE, bomb_png, photo, plain_png

pytestmark = pytest.mark.integration


NOT_FOUND_TAIL = "It may have been cleaned up (jobs are kept for 1 hour after completion)."


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_index_and_health_are_public(api):
    anon = httpx.Client(base_url=api.base)
    index = anon.get("/").json()
    assert index["docs"] == "/docs" and index["endpoints"]["submit"] == "/api/v1/submit"
    health = anon.get("/api/v1/health")
    assert health.status_code == 200
    body = health.json()
    for field in ("status", "current_model", "model_loaded", "is_loading", "is_generating",
                  "queue_max_size", "queue_cleanup_age_seconds"):
        assert field in body
    assert body["model_loaded"] is True and body["current_model"] == "tiny"
    assert body["queue_max_size"] == 10 and body["queue_cleanup_age_seconds"] == 3600
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert anon.get(path).status_code == 200


def _protected_routes(api) -> set[tuple[str, str]]:
    """The served route table (from the live OpenAPI document), less the public routes."""
    spec = httpx.get(api.base + "/openapi.json", timeout=30).json()
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
            if path not in PUBLIC_PATHS}


def test_route_table_has_the_contract_routes(api):
    routes = _protected_routes(api)
    for expected in [("GET", "/api/v1/models"), ("POST", "/api/v1/load-model"), ("POST", "/api/v1/submit"),
                     ("GET", "/api/v1/status/{job_id}"), ("GET", "/api/v1/status/{job_id}/result"),
                     ("GET", "/api/v1/queue"), ("POST", "/api/v1/edit")]:
        assert expected in routes


def test_every_non_public_route_needs_the_key(api):
    """Derived from the route table: a new route that forgets auth fails here."""
    routes = _protected_routes(api)
    assert len(routes) >= 7
    for method, path in sorted(routes):
        url = path.replace("{job_id}", str(uuid.uuid4()))
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
            r = httpx.request(method, api.base + url, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json() == {"detail": "Invalid or missing API key"}
    spec = httpx.get(api.base + "/openapi.json", timeout=30).json()  # and the docs say so
    assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "your station's API key"}
    assert all(spec["paths"][path][method.lower()].get("security") for method, path in routes)


def test_a_wrong_method_answers_405_naming_every_allowed_method(api):
    r = api.http.request("PUT", f"/api/v1/status/{uuid.uuid4()}")
    assert r.status_code == 405 and r.headers["Allow"] == "DELETE, GET"  # two routes share the path
    assert r.json()["detail"].startswith("PUT is not allowed on /api/v1/status/")


def test_submit_status_result_roundtrip(api):
    r = api.submit(IMAGE, seed=42)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"job_id", "status", "position", "message", "estimated_wait_seconds"}
    assert body["status"] == "queued" and isinstance(body["estimated_wait_seconds"], int)
    assert body["message"].startswith("Job queued successfully.")
    assert r.headers["X-Job-Id"] == body["job_id"]
    done = api.wait(body["job_id"])
    assert done["status"] == "completed" and done["error"] is None
    assert done["result_seed"] == 42 and done["model"] == "tiny" and done["instruction"] == "make the sky blue"
    assert done["position"] is None and done["started_at"] and done["completed_at"] and done["created_at"]
    name = done["result_path"]
    assert name.startswith("tiny_") and name.endswith(f"_s42_{body['job_id'][:8]}.png") and "/" not in name
    res = api.http.get(f"/api/v1/status/{body['job_id']}/result")
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert res.content.startswith(b"\x89PNG") and res.headers["X-Content-Type-Options"] == "nosniff"
    assert (api.state / "results" / name).read_bytes() == res.content
    q = api.http.get("/api/v1/queue").json()
    assert set(q) >= {"queue_size", "max_queue_size", "queued_count", "processing_count", "completed_count",
                      "failed_count", "current_job_id", "total_jobs"}
    assert q["completed_count"] >= 1 and q["max_queue_size"] == 10


def test_random_seed_is_reported(api):
    job = api.submit(IMAGE).json()
    done = api.wait(job["job_id"])
    assert isinstance(done["result_seed"], int) and f"_s{done['result_seed']}_" in done["result_path"]


def test_unknown_job_and_result_not_ready(api):
    for job_id in ["abc123", str(uuid.uuid4()), "x" * 64]:
        r = api.status(job_id)
        assert r.status_code == 404
        assert r.json()["detail"] == f"Job {job_id} not found. {NOT_FOUND_TAIL}"
        assert api.http.get(f"/api/v1/status/{job_id}/result").status_code == 404
    # a job that exists but has not finished: 404 whose detail names its status
    job = api.submit(IMAGE, preset="slow").json()
    r = api.http.get(f"/api/v1/status/{job['job_id']}/result")
    assert r.status_code == 404 and ("queued" in r.json()["detail"] or "processing" in r.json()["detail"])
    api.wait(job["job_id"])


def test_edit_blocks_and_returns_png_with_headers(api):
    r = api.http.post("/api/v1/edit", files={"image": ("a.jpg", photo(fmt="JPEG"), "image/jpeg")},
                      data={"instruction": "add snow", "seed": "7", "preset": "tiny"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["X-Seed"] == "7" and r.headers["X-Model"] == "tiny" and r.headers["X-Preset"] == "tiny"
    job_id = r.headers["X-Job-Id"]
    status = api.status(job_id).json()  # /edit went through the queue: the job is on record
    assert status["status"] == "completed" and status["result_seed"] == 7
    j = api.http.post("/api/v1/edit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": "add snow", "seed": "7", "return_image": "false"})
    assert j.status_code == 200 and j.json()["result_path"].endswith(".png") and j.json()["seed"] == 7


def test_same_seed_same_pixels(api):
    def edit(seed):
        r = api.http.post("/api/v1/edit", files={"image": ("a.png", IMAGE, "image/png")},
                          data={"instruction": "make it autumn", "seed": str(seed)})
        assert r.status_code == 200, r.text
        return pixels(r.content)

    a, b, c = edit(123), edit(123), edit(124)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_exif_orientation_is_applied(api):
    r = api.http.post("/api/v1/edit", data={"instruction": "x", "seed": "1"},
                      files={"image": ("p.jpg", photo(96, 48, fmt="JPEG", exif_orientation=6), "image/jpeg")})
    h, w, _ = pixels(r.content).shape
    assert h > w  # landscape pixels with "rotate 90" EXIF become a portrait edit


def test_models_lists_presets(api):
    body = api.http.get("/api/v1/models").json()
    assert {"qwen-4step", "qwen-8step", "qwen-40step", "tiny"} <= set(body["models"]) and body["note"]
    for name, m in body["models"].items():
        assert {"name", "suffix", "steps", "cfg_scale", "estimated_time", "description"} <= set(m)
        assert m["name"] == name
    assert body["models"]["tiny"]["available"] is True
    assert body["models"]["qwen-4step"]["available"] is False and "4-step" in body["models"]["qwen-4step"]["aliases"]


@pytest.mark.parametrize("spelling", ["qwen-4step", "4-step", "qwen-8step", "8-step", "qwen-40step", "40-step"])
def test_real_presets_without_weights_answer_4xx_naming_what_is_missing(api, spelling):
    for r in (api.submit(IMAGE, preset=spelling), api.submit(IMAGE, model=spelling),
              api.http.post("/api/v1/load-model", params={"model": spelling})):
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert "Qwen/Qwen-Image-Edit-2509" in detail and "config/serve.yaml" in detail


def test_load_model(api):
    r = api.http.post("/api/v1/load-model", params={"model": "tiny"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("status", "model", "preset", "model_name")} == {
        "status": "success", "model": "tiny", "preset": "tiny", "model_name": "builtin:tiny"}
    assert isinstance(body["load_time_seconds"], float) and body["estimated_generation_time"]
    assert api.http.post("/api/v1/load-model", params={"model": "nope"}).status_code == 400
    assert api.http.post("/api/v1/load-model").status_code == 422


def test_preset_and_model_fields(api):
    ok = api.submit(IMAGE, preset="tiny", model="tiny")
    assert ok.status_code == 200
    clash = api.submit(IMAGE, preset="tiny", model="4-step")
    assert clash.status_code == 400 and "only preset" in clash.json()["detail"]
    api.wait(ok.json()["job_id"])


def _post(api, files=None, data=None):
    return api.http.post("/api/v1/submit", files=files, data=data)


@pytest.mark.parametrize("case", ["too_big_bytes", "too_big_pixels", "gif", "html", "empty", "truncated",
                                  "bomb", "long_instruction", "empty_instruction", "long_system_prompt", "missing_image",
                                  "missing_instruction", "bad_seed", "negative_seed", "image_as_text"])
def test_bad_input_gets_a_clear_4xx(api, case):

    good = {"instruction": "x"}
    jpeg = photo(fmt="JPEG")
    cases = {
        "too_big_bytes": (400, {"image": ("a.png", b"\x89PNG" + b"\0" * int(15.2 * 1024 * 1024))}, good,
                          "Image too large (15.2MB). Maximum 10MB allowed."),
        "too_big_pixels": (400, {"image": ("a.png", plain_png(3000, 3000))}, good,
                           "Image dimensions too large (3000x3000). Maximum 2048x2048 pixels."),
        "gif": (400, {"image": ("a.gif", _gif())}, good, "Invalid image format: GIF. Must be JPEG or PNG"),
        "html": (400, {"image": ("a.png", b"<!DOCTYPE html><html><script>alert(1)</script></html>")}, good,
                 "Invalid image format: the file is an HTML document. Must be JPEG or PNG"),
        "empty": (400, {"image": ("a.png", b"")}, good, "Invalid image format: the file is empty. Must be JPEG or PNG"),
        "truncated": (400, {"image": ("a.jpg", jpeg[: len(jpeg) // 2])}, good,
                      "Invalid image format: the file is truncated or corrupt. Must be JPEG or PNG"),
        "bomb": (400, {"image": ("a.png", bomb_png(30000, 30000))}, good, "Image dimensions too large"),
        "long_instruction": (400, {"image": ("a.png", IMAGE)}, {"instruction": "a" * 501},
                             "Instruction too long (501 chars). Maximum 500 characters."),
        "empty_instruction": (400, {"image": ("a.png", IMAGE)}, {"instruction": "   "}, "Instruction is empty"),
        "long_system_prompt": (400, {"image": ("a.png", IMAGE)}, {**good, "system_prompt": "s" * 2001},
                               "System prompt too long (2001 chars). Maximum 2000 characters."),
        "missing_image": (422, None, good, "'image' is required"),
        "missing_instruction": (422, {"image": ("a.png", IMAGE)}, {}, "'instruction' is required"),
        "bad_seed": (422, {"image": ("a.png", IMAGE)}, {**good, "seed": "forty-two"}, "Invalid seed 'forty-two'"),
        "negative_seed": (422, {"image": ("a.png", IMAGE)}, {**good, "seed": "-1"}, "Invalid seed -1"),
        "image_as_text": (422, None, {**good, "image": "not a file"}, "'image' must be a file upload"),
    }
    code, files, data, detail = cases[case]
    r = _post(api, files=files, data=data)
    assert r.status_code == code, r.text
    assert detail in r.json()["detail"]
    assert "Traceback" not in r.text and "/tmp" not in r.text and "site-packages" not in r.text





def _gif():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "GIF")
    return buf.getvalue()


def test_huge_body_refused_while_streaming(api):
    chunk = b"\0" * (1024 * 1024)

    def body():  # a well-formed file part of 50 MB, chunked: no Content-Length to trust
        yield (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(50):
            yield chunk
        yield b"\r\n--xyz--\r\n"

    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    r = api.http.post("/api/v1/submit", content=body(), headers=headers)
    assert r.status_code == 413 and "Request body too large" in r.json()["detail"]
    declared = api.http.post("/api/v1/submit", files={"image": ("a.png", chunk * 50)}, data={"instruction": "x"})
    assert declared.status_code == 413 and "(50.0MB)" in declared.json()["detail"]
    assert api.http.get("/api/v1/health").status_code == 200  # still serving


def test_docs_show_an_example_for_every_route_and_status(api):
    spec = httpx.get(api.base + "/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]

    def has_example(media: dict) -> bool:
        ref = media.get("schema", {}).get("$ref", "")
        return ("example" in media or "examples" in media or media.get("schema", {}).get("format") == "binary"
                or "examples" in schemas.get(ref.rsplit("/", 1)[-1], {}))

    missing = [(method, path, code) for path, ops in spec["paths"].items() for method, op in ops.items()
               for code, response in op["responses"].items()
               if not response.get("content") or not all(has_example(m) for m in response["content"].values())]
    assert missing == []
    for path, ops in spec["paths"].items():  # and every documented error says what it means
        for op in ops.values():
            for code, response in op["responses"].items():
                assert int(code) < 400 or len(response["description"]) > 20, (path, code)
