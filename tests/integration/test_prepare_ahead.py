"""Every worker claims its next job on the current job's last step; one that also prepares it
meanwhile (what GPU workers do by default), forced on here on the CPU: FIFO, exact counts and pixels
unchanged."""


import pytest

from tests.helpers import IMAGE, remove_app, worker_info

pytestmark = pytest.mark.integration


def test_jobs_prepared_ahead_run_in_order_with_the_same_pixels(deploy, api):
    ahead = deploy("ahead", "/ahead", wait_workers=True, worker={"num_cpus": 0, "prepare_ahead": True})
    try:
        ahead.drain()
        ids = [ahead.submit(IMAGE, instruction=f"edit {i}", preset="slow", seed=100 + i).json()["job_id"]
               for i in range(6)]
        done = [ahead.wait(job_id, timeout=180) for job_id in ids]
        assert [d["status"] for d in done] == ["completed"] * 6
        assert all(d["attempts"] == 1 for d in done)
        # started in submission order, one worker: each claimed on the previous job's last step
        starts = [d["started_at"] for d in done]
        assert starts == sorted(starts)
        info = worker_info("ahead")
        assert info["jobs_done"] == 6 and info["jobs_claimed_ahead"] == info["jobs_prepared_ahead"] == 5
        q = ahead.http.get("/api/v1/queue").json()
        assert q["processing_count"] == 0 and q["queued_count"] == 0
        # the same job on the main app (prepare_ahead off on a CPU) gives the same bytes; the job
        # behind it there is claimed ahead but not prepared
        api.drain()
        before = worker_info("main")
        twin, behind = (api.submit(IMAGE, instruction=f"edit {i}", preset="slow", seed=100 + i).json()["job_id"]
                        for i in (3, 4))
        assert [api.wait(j, timeout=120)["status"] for j in (twin, behind)] == ["completed"] * 2
        after = worker_info("main")
        assert after["jobs_claimed_ahead"] - before["jobs_claimed_ahead"] == 1
        assert after["jobs_prepared_ahead"] == before["jobs_prepared_ahead"] == 0
        mine = ahead.http.get(f"/api/v1/status/{ids[3]}/result").content
        assert mine.startswith(b"\x89PNG") and mine == api.http.get(f"/api/v1/status/{twin}/result").content
    finally:
        remove_app("ahead")
