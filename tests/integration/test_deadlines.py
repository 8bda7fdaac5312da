"""Deadlines through the real app: a running job that misses its deadline (the Cancel-After header)
ends as cancelled with the reason and frees its worker; a submit whose start the queue already places
later than its start_within_seconds is refused with 429 and Retry-After."""

from tests.helpers import IMAGE, wait_for


def post(api, headers=None, **fields):
    data = {"instruction": "make it blue", **{k: str(v) for k, v in fields.items()}}
    return api.http.post("/api/v1/submit", files={"image": ("in.png", IMAGE, "image/png")}, data=data,
                         headers=headers or {})


def test_a_running_job_past_its_deadline_is_cancelled_with_the_reason(api):
    api.drain()
    job = post(api, {"Cancel-After": "500ms"}, preset="long", seed=1).json()["job_id"]
    wait_for(lambda: api.status(job).json()["status"] == "cancelled", timeout=20,
             show=lambda: api.status(job).json())
    view = api.status(job).json()
    assert view["error"] == "Cancelled: not finished within 0.5s (deadline_seconds)."
    assert view["step"] < view["total_steps"]  # stopped mid-run, not finished
    after = post(api, seed=2).json()["job_id"]  # the worker was freed
    assert api.wait(after)["status"] == "completed"


def test_a_start_the_queue_already_places_too_late_is_refused(api):
    api.drain()
    first = post(api, preset="long", seed=3).json()["job_id"]
    wait_for(lambda: api.status(first).json()["status"] == "processing", timeout=20)
    r = post(api, seed=4, start_within_seconds="0.1")
    assert r.status_code == 429 and "later than its start_within_seconds (0.1s)" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) >= 1
    fits = post(api, seed=5, start_within_seconds="300")
    assert fits.status_code == 200
    assert api.wait(fits.json()["job_id"])["status"] == "completed" and api.wait(first)["status"] == "completed"
