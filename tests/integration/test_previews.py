"""Live previews through the real Serve app on the tiny model: preview events while the job runs,
the latest one at GET .../preview as a decodable JPEG, and nothing for a job that did not ask."""

import base64
import io
import threading

import pytest
from PIL import Image

from tests.helpers import IMAGE, read_events, wait_for

pytestmark = pytest.mark.integration


def test_preview_events_while_it_runs_and_the_latest_at_the_preview_route(api):
    job_id = api.submit(IMAGE, preset="slow", seed=11, previews="true").json()["job_id"]
    fetched = []

    def fetch_while_running():  # the route, while the job runs
        wait_for(lambda: api.status(job_id).json().get("preview_step"), 60, every=0.05)
        r = api.http.get(f"/api/v1/status/{job_id}/preview")
        fetched.append(r)

    poller = threading.Thread(target=fetch_while_running)
    poller.start()
    events = read_events(api, job_id)
    poller.join(timeout=90)

    names = [n for n, _ in events if n]
    assert names[-1] == "completed"
    previews = [d for n, d in events if n == "preview"]
    assert len(previews) >= 2, names  # one per step; a listener slower than the steps may skip some
    steps = [p["step"] for p in previews]
    assert steps == sorted(set(steps)) and 1 <= steps[0] and steps[-1] <= 8
    assert names.index("preview") < names.index("completed")
    for p in previews:
        assert p["job_id"] == job_id and p["image"].startswith("data:image/jpeg;base64,")
        shown = Image.open(io.BytesIO(base64.b64decode(p["image"].split(",", 1)[1])))
        assert shown.format == "JPEG" and max(shown.size) <= 256

    [r] = fetched
    if r.status_code == 200:  # (a 404 only if the job finished between the poll and the request)
        assert r.headers["content-type"] == "image/jpeg" and int(r.headers["X-Step"]) >= 1
        assert Image.open(io.BytesIO(r.content)).format == "JPEG"
    else:
        assert r.status_code == 404 and "download the result instead" in r.json()["detail"]
    assert api.status(job_id).json()["status"] == "completed"
    gone = api.http.get(f"/api/v1/status/{job_id}/preview")  # finished: the result replaces it
    assert gone.status_code == 404
    assert gone.json()["detail"] == f"Job {job_id} has no preview: it is completed; download the result instead."


def test_a_job_without_previews_gets_none(api):
    job_id = api.submit(IMAGE, preset="slow", seed=12).json()["job_id"]
    wait_for(lambda: api.status(job_id).json()["status"] == "processing", 60, every=0.05)
    r = api.http.get(f"/api/v1/status/{job_id}/preview")
    assert r.status_code == 404
    assert r.json()["detail"] == f"Job {job_id} has no preview: it was submitted without previews=true."
    events = read_events(api, job_id)
    assert "preview" not in [n for n, _ in events] and events[-1][0] == "completed"
    assert api.status(job_id).json()["preview_step"] is None
