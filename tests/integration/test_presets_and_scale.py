"""Issue 3 behaviour through HTTP: LoRA presets, preset switches, multi-image jobs, several
workers on (faked) GPUs, unschedulable workers, and a job that raises."""

import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.helpers import IMAGE, photo

pytestmark = pytest.mark.integration


def _edit(api, preset, seed=5, image=IMAGE):
    r = api.http.post("/api/v1/edit", files={"image": ("a.png", image, "image/png")},
                      data={"instruction": "make it gold", "seed": str(seed), "preset": preset})
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def test_lora_preset_switches_and_round_trip_is_pixel_identical(api):
    before = _edit(api, "tiny")
    fused = _edit(api, "lora4")
    assert not np.array_equal(before, fused)  # the LoRA was applied
    after = _edit(api, "tiny")
    again = _edit(api, "lora4")
    assert np.array_equal(before, after) and np.array_equal(fused, again)
    assert "lora4" in api.http.get("/api/v1/models").json()["models"]


def test_lora_for_another_model_fails_the_job_clearly_and_the_worker_carries_on(api):
    job = api.submit(IMAGE, preset="alien").json()
    done = api.wait(job["job_id"])
    assert done["status"] == "failed" and "does not fit this model" in done["error"]
    assert "/" not in done["error"].replace("e.g. ", "")  # no server path
    ok = api.wait(api.submit(IMAGE, preset="tiny").json()["job_id"])
    assert ok["status"] == "completed"
    r = api.http.post("/api/v1/edit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": "x", "preset": "alien"})
    assert r.status_code == 503 and r.json()["detail"].startswith("The edit failed:") and r.headers["X-Job-Id"]


def test_multi_image_jobs(api):
    two = [("image", ("a.png", IMAGE, "image/png")), ("image", ("b.png", photo(256, 256, seed=2), "image/png"))]
    r = api.http.post("/api/v1/submit", files=two, data={"instruction": "put the cat from picture 2 in picture 1"})
    assert r.status_code == 200, r.text
    assert api.wait(r.json()["job_id"])["status"] == "completed"
    named = {"image": ("a.png", IMAGE, "image/png"), "image2": ("b.png", photo(seed=3), "image/png"),
             "image3": ("c.png", photo(300, 200, seed=4), "image/png")}
    r = api.http.post("/api/v1/submit", files=named, data={"instruction": "combine"})
    assert r.status_code == 200 and api.wait(r.json()["job_id"])["status"] == "completed"
    four = [("image", (f"{i}.png", IMAGE, "image/png")) for i in range(4)]
    r = api.http.post("/api/v1/submit", files=four, data={"instruction": "x"})
    assert r.status_code == 400 and r.json()["detail"] == "Too many images (4). A job takes at most 3."


def test_two_gpu_workers_run_two_jobs_at_once(multi_api):
    multi_api.drain()
    completed = multi_api.http.get("/api/v1/queue").json()["completed_count"]  # the app is shared
    ids = [multi_api.submit(IMAGE, preset="slow", seed=i).json()["job_id"] for i in range(4)]
    together, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        views = [multi_api.status(j).json() for j in ids]
        running = {v["worker"] for v in views if v["status"] == "processing"}
        together = max(together, len(running))  # distinct replicas busy at the same moment
        if all(v["status"] in ("completed", "failed") for v in views):
            break
        time.sleep(0.05)
    assert together == 2, "two replicas should run two jobs at the same time"
    assert all(multi_api.wait(j)["status"] == "completed" for j in ids)
    q = multi_api.http.get("/api/v1/queue").json()
    assert q["processing_count"] == 0 and q["completed_count"] == completed + 4
    workers = multi_api.http.get("/api/v1/health").json()["workers"]
    gpu_ids = sorted(tuple(w["gpu_ids"]) for w in workers)
    assert len(workers) == 2 and all(len(g) == 1 for g in gpu_ids) and gpu_ids[0] != gpu_ids[1]


def test_unschedulable_workers_are_reported_and_jobs_refused(nowhere_api):
    deadline = time.monotonic() + 30
    while not (health := nowhere_api.http.get("/api/v1/health").json())["warnings"]:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert health["status"] == "degraded" and health["model_loaded"] is False
    assert "no-such-node" in health["warnings"][0]
    r = nowhere_api.submit(IMAGE)
    assert r.status_code == 503 and r.json()["detail"].startswith("No model worker can be scheduled")
    assert nowhere_api.http.get("/api/v1/queue").json()["total_jobs"] == 0
