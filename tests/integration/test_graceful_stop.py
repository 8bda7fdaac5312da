"""Issue 5, graceful stop: what ``qwen-serve`` asks of the queue on SIGTERM (``QueueActor.drain``).

The whole path (SIGTERM to ``qwen-serve``, the running job finishing within the grace period, the
server exiting, the next start running what was left) is in tests/smoke_serve_run.py. Here, on a
real Serve app: a job still running when the grace period ends is queued again at the head without
losing an attempt, its worker stops, queued jobs stay queued, and nothing new starts.
"""

import time

import pytest

from tests.helpers import IMAGE, remove_app, wait_for

pytestmark = pytest.mark.integration


def test_drain_requeues_a_job_that_outlives_the_grace_period(deploy):
    from ray import serve

    # num_cpus 0: the session's other apps already reserve the cluster's two CPUs (bookkeeping only)
    api = deploy("stopping", "/stopping", wait_workers=True, graceful_stop_seconds=1,
                  worker={"num_cpus": 0})
    try:
        running = api.submit(IMAGE, preset="long", seed=1).json()["job_id"]
        queued = api.submit(IMAGE, preset="slow", seed=2).json()["job_id"]
        wait_for(lambda: api.status(running).json()["step"] >= 1, timeout=60)

        t0 = time.monotonic()
        outcome = serve.get_deployment_handle("QueueActor", app_name="stopping").drain.remote().result(timeout_s=30)
        assert 0.9 <= time.monotonic() - t0 < 10  # waited out the grace period, not more
        assert outcome == {"finished": 0, "requeued": [running], "queued": 2}

        # The drain was not a write through the ingress: its mirror shows it within a feed round trip.
        first = wait_for(lambda: (v := api.status(running).json())["status"] == "queued" and v, timeout=5)
        second = api.status(queued).json()
        assert (first["status"], first["position"], first["attempts"]) == ("queued", 1, 0)
        assert (second["status"], second["position"]) == ("queued", 2)
        health = wait_for(lambda: (h := api.http.get("/api/v1/health").json())["warnings"] and h, timeout=5)
        assert any("stopping" in w for w in health["warnings"]), health

        # Accepted (it is stored for the next start) but nothing starts, and the worker let go.
        late = api.submit(IMAGE, preset="slow", seed=3)
        assert late.status_code == 200, late.text
        time.sleep(3)
        views = [api.status(j).json() for j in (running, queued, late.json()["job_id"])]
        assert [v["status"] for v in views] == ["queued"] * 3, views
        assert views[0]["step"] == 0
        assert api.http.get("/api/v1/queue").json()["processing_count"] == 0
    finally:
        remove_app("stopping")
