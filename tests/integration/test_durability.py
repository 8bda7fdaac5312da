"""Issue 5, durability: the queue actor killed mid-work comes back with every job (SQLite state).

The whole-server restarts (SIGTERM, and SIGKILL of `serve run` and its cluster) are checked by
tests/smoke_serve_run.py, which owns its own Ray cluster.
"""

import time

import pytest

from tests.integration.test_api import IMAGE
from tests.integration.test_live import wait_for

pytestmark = pytest.mark.integration


def kill_queue_actor(app: str) -> None:
    import ray

    found = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"SERVE_REPLICA::{app}#QueueActor#")]
    assert len(found) == 1, found
    ray.kill(ray.get_actor(found[0]["name"], namespace=found[0]["namespace"]), no_restart=False)


def test_queue_actor_killed_comes_back_with_every_job(api):
    api.drain()
    done_id = api.submit(IMAGE, seed=77).json()["job_id"]
    assert api.wait(done_id)["status"] == "completed"
    png = api.http.get(f"/api/v1/status/{done_id}/result").content
    running = api.submit(IMAGE, preset="long", seed=1).json()["job_id"]
    queued = [api.submit(IMAGE, preset="slow", seed=s).json()["job_id"] for s in (2, 3)]
    wait_for(lambda: api.status(running).json()["status"] == "processing")
    assert [api.status(j).json()["position"] for j in queued] == [1, 2]

    kill_queue_actor("main")
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
