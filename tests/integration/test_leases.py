"""Leases on running jobs through the real Serve app, with named fake engines (tests/fakes.py): no job
holds a slot for longer than its lease after its last sign of progress."""

import uuid

import pytest

from serve_app.queue.endings import LEASE_EXPIRED
from tests.helpers import IMAGE, remove_app, wait_for

pytestmark = pytest.mark.integration
LEASE = 6  # short for a quick test, long enough that a busy CI machine does not lose a job with progress


def _worker_ids(api) -> set[str]:
    return {w["id"] for w in api.http.get("/api/v1/health").json()["workers"]}


def test_a_hung_pipeline_loses_its_job_to_another_replica_and_is_replaced(deploy):
    api = deploy("hang", "/hang", wait_workers=True, job_lease_seconds=LEASE,
                  worker={"num_cpus": 0, "num_replicas": 2, "engine": "tests.fakes:HangsOnceEngine"})
    try:
        wait_for(lambda: len(_worker_ids(api)) == 2, 60, every=0.5, show=lambda: "two workers")
        job_id = api.submit(IMAGE, instruction=f"hang {uuid.uuid4().hex}", preset="slow").json()["job_id"]
        first = wait_for(lambda: api.status(job_id).json()["worker"], 30, every=0.5,
                         show=lambda: "the job never started")
        done = api.wait(job_id, timeout=60)
        assert (done["status"], done["attempts"]) == ("completed", 2), done  # leased back once, run again
        assert done["worker"] != first  # on the other replica: the first one is still stuck
        # the stuck replica fails its health check (no progress for longer than the lease): replaced
        wait_for(lambda: first not in (ids := _worker_ids(api)) and len(ids) == 2, 90, every=0.5,
                 show=lambda: "the hung replica was not replaced")
        q = api.http.get("/api/v1/queue").json()
        assert q["processing_count"] == 0 and q["queued_count"] == 0
        after = api.submit(IMAGE, preset="speck").json()["job_id"]
        assert api.wait(after, timeout=60)["status"] == "completed"
    finally:
        remove_app("hang")


def test_an_outcome_that_never_comes_runs_once_more_then_fails_with_a_sentence(deploy):
    api = deploy("silent", "/silent", wait_workers=True, job_lease_seconds=LEASE,
                  worker={"num_cpus": 0, "engine": "tests.fakes:SilentEngine"})
    try:
        job_id = api.submit(IMAGE, instruction="silent, please", preset="speck").json()["job_id"]
        done = api.wait(job_id, timeout=150)
        assert done["status"] == "failed" and done["attempts"] == 2
        assert done["error"] == LEASE_EXPIRED.format(seconds=LEASE)
        assert api.http.get("/api/v1/queue").json()["processing_count"] == 0  # its slot is free
        # the replicas that went silent are replaced; the service carries on
        wait_for(lambda: api.http.get("/api/v1/health").json()["model_loaded"], 90, every=0.5,
                 show=lambda: "no worker came back")
        after = api.submit(IMAGE, preset="speck").json()["job_id"]
        assert api.wait(after, timeout=90)["status"] == "completed"
    finally:
        remove_app("silent")
