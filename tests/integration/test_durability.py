"""Issue 5, durability: the queue actor killed mid-work comes back with every job (SQLite state).

The whole-server restarts (SIGTERM, and SIGKILL of `serve run` and its cluster) are checked by
tests/smoke_serve_run.py, which owns its own Ray cluster.
"""

import time

import pytest

from tests.helpers import IMAGE, kill_replica, replica_rss, wait_for

pytestmark = pytest.mark.integration


def test_queue_actor_killed_comes_back_with_every_job(api):
    api.drain()
    done_id = api.submit(IMAGE, seed=77).json()["job_id"]
    assert api.wait(done_id)["status"] == "completed"
    png = api.http.get(f"/api/v1/status/{done_id}/result").content
    running = api.submit(IMAGE, preset="long", seed=1).json()["job_id"]
    queued = [api.submit(IMAGE, preset="slow", seed=s).json()["job_id"] for s in (2, 3)]
    wait_for(lambda: api.status(running).json()["status"] == "processing")
    assert [api.status(j).json()["position"] for j in queued] == [1, 2]

    kill_replica("main", "QueueActor", restart=True)
    codes, deadline = [], time.monotonic() + 90
    while time.monotonic() < deadline:
        r = api.http.get(f"/api/v1/status/{queued[1]}")
        codes.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and "not reachable" in r.json()["detail"], (r.status_code, r.text)
        time.sleep(0.2)
    assert codes[-1] == 200, codes

    again = api.http.get(f"/api/v1/status/{done_id}/result")
    assert again.status_code == 200 and again.content == png  # finished: still there, byte-identical
    finals = [api.wait(j, timeout=90) for j in [running, *queued]]
    assert [f["status"] for f in finals] == ["completed"] * 3
    assert finals[1]["started_at"] <= finals[2]["started_at"]  # the queued ones ran in their order
    assert finals[0]["attempts"] in (1, 2)  # its worker reported it, or it ran once more


@pytest.mark.timeout(900)  # about 5 minutes of jobs on a 2-core machine
def test_a_thousand_jobs_leave_the_queue_memory_bounded(api):
    """1,000 tiny jobs through the server: the queue actor's memory stays within 50 MB of its start."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 90)).save(buf, "PNG")
    image = buf.getvalue()
    api.drain()
    before = replica_rss("main")
    accepted, deadline = 0, time.monotonic() + 900
    while accepted < 1000:
        assert time.monotonic() < deadline, f"only {accepted} jobs in 900 s"
        r = api.http.post("/api/v1/submit", files={"image": ("a.png", image, "image/png")},
                          data={"instruction": "x", "preset": "speck", "seed": str(accepted)})
        if r.status_code == 429:
            time.sleep(0.05)
            continue
        assert r.status_code == 200, r.text
        accepted += 1
    api.drain(timeout=300)
    stats = api.http.get("/api/v1/queue").json()
    assert stats["processing_count"] == 0 and stats["queued_count"] == 0
    grown = replica_rss("main") - before
    print(f"queue actor memory after 1,000 jobs: {grown / 2**20:+.1f} MB")  # shown with -s
    assert grown < 50 * 2**20, f"the queue actor grew by {grown / 2**20:.1f} MB"
