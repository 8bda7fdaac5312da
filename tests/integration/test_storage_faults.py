"""Faults of the results folder through the real Serve app: a disk that fills up mid-queue."""

import subprocess

import pytest
from ray import serve

from tests.helpers import IMAGE, wait_for

pytestmark = pytest.mark.integration
FULL = ("The server could not store the result: the disk holding the results folder is full. Submit the job "
        "again once the operator has fixed it.")


def _storage_warnings(api) -> list[str]:
    return [w for w in api.http.get("/api/v1/health").json()["warnings"] if "result" in w]


def test_a_full_results_disk_fails_jobs_at_once_and_the_queue_recovers(deploy, tmp_path):
    results = tmp_path / "tiny-results"
    results.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(results)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MB tmpfs here: {mounted.stderr.decode()[:200]}")
    try:
        api = deploy("disk", "/disk", wait_workers=True, results_dir=str(results),
                      min_free_disk_mb=0.5, worker={"num_cpus": 0})
        api.drain()
        assert _storage_warnings(api) == []
        # 384x384 noise PNGs of a few hundred KB each: the 1 MB disk fills up within six jobs
        ids = [api.submit(IMAGE, preset="slow", seed=i).json()["job_id"] for i in range(6)]
        done = [api.wait(job_id, timeout=120) for job_id in ids]
        stored = sum(d["status"] == "completed" for d in done)
        assert 1 <= stored <= 4 and [d["status"] for d in done] == ["completed"] * stored + ["failed"] * (6 - stored)
        assert [d["error"] for d in done[stored:]] == [FULL] * (6 - stored)
        q = api.http.get("/api/v1/queue").json()
        assert q["processing_count"] == 0 and q["queued_count"] == 0  # no slot held by a failed write
        warnings = wait_for(lambda: (w := _storage_warnings(api)) and any("Free some space" in x for x in w) and w,
                            10, every=0.3, show=lambda: f"health never warned about the full disk: {_storage_warnings(api)}")
        assert "The last result could not be stored: the disk holding the results folder is full." in warnings
        assert api.http.get(f"/api/v1/status/{ids[0]}/result").content.startswith(b"\x89PNG")  # kept
        for path in results.iterdir():  # the operator makes room
            path.unlink()
        wait_for(lambda: not _storage_warnings(api), 10, every=0.3,
                 show=lambda: "health kept warning after space came back")
        again = [api.submit(IMAGE, preset="slow", seed=10 + i).json()["job_id"] for i in range(2)]
        assert [api.wait(job_id, timeout=120)["status"] for job_id in again] == ["completed", "completed"]
    finally:
        serve.delete("disk")
        subprocess.run(["umount", str(results)], capture_output=True)
