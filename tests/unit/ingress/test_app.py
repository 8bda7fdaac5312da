"""The HTTP layer alone (``serve_app.ingress.app.make_app``) over a fake ``EditService``: the routes translate,
errors are mapped once at the edge, and every app is its own (no module-level state)."""

import asyncio
import time

import httpx
import pytest

from serve_app.config import build_settings
from serve_app.contract.protocol import JobStatus, JobView
from serve_app.errors import JobNotFound, QueueFull
from serve_app.ingress.app import make_app


def view(job_id="j1", status=JobStatus.QUEUED, position=1) -> JobView:
    return JobView(job_id=job_id, status=status, position=position, created_at="2026-11-30T10:00:00",
                   started_at=None, completed_at=None, result_path=None, result_seed=None, error=None,
                   instruction="make it blue", model="tiny", estimated_wait_seconds=3, worker=None, progress=0.0,
                   step=0, total_steps=None, eta_seconds=3.0, station="default", run_seconds=None, attempts=0, priority="normal", preview_step=None)


class FakeService:
    """Answers each call with what ``answers`` holds for it (an exception is raised)."""

    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    def __getattr__(self, name):
        async def call(*args):
            self.calls.append((name, args))
            answer = self.answers[name]
            if isinstance(answer, BaseException):
                raise answer
            return answer
        return call


def settings(tmp_path, key: str):
    return build_settings({"state_dir": str(tmp_path), "api_key_file": str(tmp_path / f"{key}.key")})


def request(app, method, path, key=None, **kw):
    async def main():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"X-API-Key": key} if key else {}
            return await client.request(method, path, headers=headers, **kw)
    return asyncio.run(main())


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "a.key").write_text("key-of-app-a-0123456789\n")
    (tmp_path / "b.key").write_text("key-of-app-b-0123456789\n")
    return "key-of-app-a-0123456789", "key-of-app-b-0123456789"


def test_two_apps_share_nothing(tmp_path, keys):
    a = make_app(FakeService(status=view()), settings(tmp_path, "a"))
    b = make_app(FakeService(status=view("other")), settings(tmp_path, "b"))
    assert request(a, "GET", "/api/v1/status/j1", keys[0]).json()["job_id"] == "j1"
    assert request(b, "GET", "/api/v1/status/j1", keys[0]).status_code == 401  # a's key is not b's
    assert request(b, "GET", "/api/v1/status/j1", keys[1]).json()["job_id"] == "other"


def test_errors_are_mapped_once_at_the_edge(tmp_path, keys):
    app = make_app(FakeService(status=JobNotFound("j9", 3600), queue_stats=asyncio.TimeoutError(),
                               jobs=RuntimeError("/srv/secret/path exploded")), settings(tmp_path, "a"))
    r = request(app, "GET", "/api/v1/status/j9", keys[0])
    assert r.status_code == 404 and "j9" in r.json()["detail"]
    r = request(app, "GET", "/api/v1/queue", keys[0])
    assert r.status_code == 503 and "not reachable" in r.json()["detail"]
    r = request(app, "GET", "/api/v1/jobs", keys[0])
    assert r.status_code == 500 and r.json() == {"detail": "Internal server error."}  # no path, no traceback
    r = request(app, "GET", "/api/v1/status/j9")
    assert r.status_code == 401 and r.json()["detail"]


def test_submit_answers_the_contracts_shape_and_headers(tmp_path, keys):
    service = FakeService(submit=(view(position=2), True))
    app = make_app(service, settings(tmp_path, "a"))
    r = request(app, "POST", "/api/v1/submit", keys[0], files={"image": ("a.png", b"png", "image/png")},
                data={"instruction": "make it blue"})
    assert r.status_code == 200 and r.headers["X-Job-Id"] == "j1"
    assert r.json() == {"job_id": "j1", "status": "queued", "position": 2,
                        "message": "Job queued successfully. Position: 2", "estimated_wait_seconds": 3}
    form = service.calls[0][1][0]
    assert form.instruction == "make it blue" and len(form.images) == 1
    service.answers["submit"] = QueueFull(10, 7)
    r = request(app, "POST", "/api/v1/submit", keys[0], files={"image": ("a.png", b"png", "image/png")},
                data={"instruction": "x"})
    assert r.status_code == 429 and r.headers["Retry-After"] == "7" and "Queue is full" in r.json()["detail"]


def test_health_is_public_and_503_when_the_queue_is_away(tmp_path):
    body = {"status": "degraded", "warnings": ["The job queue is not reachable."], "current_model": None,
            "model_loaded": False, "is_loading": False, "is_generating": False, "queue_max_size": 10,
            "queue_cleanup_age_seconds": 3600, "workers": []}
    app = make_app(FakeService(health=(body, False)), settings(tmp_path, "a"))
    r = request(app, "GET", "/api/v1/health")
    assert r.status_code == 503 and r.json()["warnings"] == ["The job queue is not reachable."]


def test_a_station_over_its_rate_gets_429_and_others_are_served(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text("flood: key-of-the-flooder-0123456\ncalm: key-of-a-calm-one-0123456\n")
    s = build_settings({"state_dir": str(tmp_path), "api_keys_file": str(keys),
                        "rate_limit": {"requests_per_second": 0.01, "burst": 3}})
    service = FakeService(status=view())
    app = make_app(service, s)

    async def main():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            start = time.monotonic()
            flood = [await client.get("/api/v1/status/j1", headers={"X-API-Key": "key-of-the-flooder-0123456"})
                     for _ in range(5)]
            flood_s = time.monotonic() - start
            calm = await client.get("/api/v1/status/j1", headers={"X-API-Key": "key-of-a-calm-one-0123456"})
            index = await client.get("/", headers={"X-API-Key": "key-of-the-flooder-0123456"})
            return flood, flood_s, calm, index  # public routes are not counted

    flood, flood_s, calm, index = asyncio.run(main())
    assert [r.status_code for r in flood] == [200] * 3 + [429] * 2
    assert 95 <= int(flood[-1].headers["Retry-After"]) <= 100  # one request per 100 s
    assert flood_s >= 2.0  # each refusal is held a second: a flooder's connection sends one a second
    assert flood[-1].json()["detail"].startswith("Too many requests from station flood: at most 0.01 per second")
    assert len([c for c in service.calls if c[0] == "status"]) == 4  # refused ones never reach the queue
    assert calm.status_code == 200 and index.status_code == 200
