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

    # The status above may come from the ingress's mirror, which can answer for a moment after the
    # queue went away (within its freshness bound); the result always asks the queue, so it may
    # still answer 503 "not reachable" until the new replica serves: retried as a station would.
    def result():
        r = api.http.get(f"/api/v1/status/{done_id}/result")
        assert r.status_code in (200, 503), (r.status_code, r.text)
        assert r.status_code == 200 or "not reachable" in r.json()["detail"], r.text
        return r if r.status_code == 200 else None

    again = wait_for(result, timeout=90, every=0.2)
    assert again.content == png  # finished: still there, byte-identical
    finals = [api.wait(j, timeout=90) for j in [running, *queued]]
    assert [f["status"] for f in finals] == ["completed"] * 3
    assert finals[1]["started_at"] <= finals[2]["started_at"]  # the queued ones ran in their order
    assert finals[0]["attempts"] in (1, 2)  # its worker reported it, or it ran once more


@pytest.mark.timeout(900)
def test_a_thousand_jobs_leave_the_queue_memory_bounded(deploy, remove_after):
    """1,000 jobs through the server: the queue actor's memory stays within 50 MB of its start. The
    worker's engine makes each result at once (``tests.fakes:InstantEngine``): what is counted is what
    the queue keeps per job, and every call of a job's path is the real one."""
    import io

    from PIL import Image

    api = deploy("thousand", "/thousand", wait_workers=True,
                 worker={"num_cpus": 0, "engine": "tests.fakes:InstantEngine"})
    remove_after("thousand")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 90)).save(buf, "PNG")
    image = buf.getvalue()
    before = replica_rss("thousand")
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
    # (the ingress's view may trail the queue's by one feed period: wait for it, then count exactly)
    stats = wait_for(lambda: (q := api.http.get("/api/v1/queue").json())["completed_count"] == 1000 and q, 30,
                     show=lambda: api.http.get("/api/v1/queue").json())
    assert (stats["total_jobs"], stats["processing_count"], stats["queued_count"], stats["failed_count"]) == (
        1000, 0, 0, 0), stats
    grown = replica_rss("thousand") - before
    print(f"queue actor memory after 1,000 jobs: {grown / 2**20:+.1f} MB")  # shown with -s
    assert grown < 50 * 2**20, f"the queue actor grew by {grown / 2**20:.1f} MB"
