"""Queue behaviour through HTTP: exact cap counts, FIFO, live position, ETA, TTL expiry."""

import asyncio
import io
import time

import httpx
import pytest

from tests.helpers import IMAGE, KEY

pytestmark = pytest.mark.integration
FULL = "Queue is full (maximum 10 jobs). Please try again later."


def test_15_quick_submits_give_10_accepted_5_refused(api):
    api.drain()
    codes, refusals, accepted = [], [], []
    for i in range(15):
        r = api.submit(IMAGE, preset="slow", seed=i)
        codes.append(r.status_code)
        (refusals if r.status_code == 429 else accepted).append(r)
    assert codes.count(200) == 10 and codes.count(429) == 5, codes
    assert codes[:10] == [200] * 10  # the first ten got in, in order
    for r in refusals:
        assert r.json() == {"detail": FULL}
        assert int(r.headers["Retry-After"]) >= 1
    q = api.http.get("/api/v1/queue").json()
    # the cap counts the running job: one processing plus nine waiting make ten (two plus eight
    # while the worker claims its next job on the running one's last step)
    assert q["queue_size"] == 10 and q["processing_count"] + q["queued_count"] == 10
    assert q["processing_count"] in (1, 2), q
    # /edit goes through the same queue and cap: no bypass
    r = api.http.post("/api/v1/edit", files={"image": ("a.png", IMAGE, "image/png")}, data={"instruction": "x"})
    assert r.status_code == 429 and r.json() == {"detail": FULL} and "Retry-After" in r.headers
    for r in accepted:  # (the next test starts on an empty queue, without ten slow jobs' wait)
        api.http.post(f"/api/v1/status/{r.json()['job_id']}/cancel")
    api.drain()


def test_50_concurrent_submits_give_exactly_10_and_40(frozen):
    async def main():
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=frozen.base, headers={"X-API-Key": KEY}, timeout=60,
                                     limits=limits) as client:
            async def one(i):
                r = await client.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                                      data={"instruction": f"edit {i}"})
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(50)))

    codes = asyncio.run(main())
    assert codes.count(200) == 10 and codes.count(429) == 40, codes
    q = frozen.http.get("/api/v1/queue").json()
    assert q["queue_size"] == 10 and q["queued_count"] == 10 and q["processing_count"] == 0
    health = frozen.http.get("/api/v1/health").json()
    assert health["model_loaded"] is False and health["workers"] == []


def test_fifo_and_live_position(api):
    api.drain()
    ids = [api.submit(IMAGE, preset="slow", seed=i).json()["job_id"] for i in range(4)]
    first = [api.status(j).json() for j in ids]
    assert first[0]["status"] in ("queued", "processing")
    waiting = [s for s in first if s["status"] == "queued"]
    assert [s["position"] for s in waiting] == list(range(1, len(waiting) + 1))
    etas = [s["estimated_wait_seconds"] for s in first]
    assert etas == sorted(etas) and etas[-1] > etas[0]  # later jobs wait longer

    started, finished, positions = {}, {}, {j: set() for j in ids}
    deadline = time.monotonic() + 90
    while len(finished) < len(ids) and time.monotonic() < deadline:
        for j in ids:
            s = api.status(j).json()
            if s["position"] is not None:
                positions[j].add(s["position"])
            if s["status"] in ("processing", "completed") and j not in started:
                started[j] = time.monotonic()
            if s["status"] == "completed" and j not in finished:
                finished[j] = time.monotonic()
        time.sleep(0.05)
    assert len(finished) == len(ids)
    assert sorted(ids, key=started.get) == ids  # FIFO: started in submission order
    assert sorted(ids, key=finished.get) == ids
    # the last job's position moved as the jobs ahead finished
    assert {1, 2} <= positions[ids[3]] and positions[ids[1]] >= {1}


def test_finished_jobs_expire_with_their_files(ttl_api):
    job = ttl_api.submit(IMAGE).json()
    done = ttl_api.wait(job["job_id"])
    result = ttl_api.state / "results" / done["result_path"]
    assert result.exists()
    assert ttl_api.http.get(f"/api/v1/status/{job['job_id']}/result").status_code == 200
    deadline = time.monotonic() + 20
    while ttl_api.status(job["job_id"]).status_code != 404:
        assert time.monotonic() < deadline, "job did not expire"
        time.sleep(0.2)
    r = ttl_api.status(job["job_id"])
    assert r.json()["detail"] == (f"Job {job['job_id']} not found. It may have been cleaned up "
                                  "(jobs are kept for 2 seconds after completion).")
    assert ttl_api.http.get(f"/api/v1/status/{job['job_id']}/result").status_code == 404
    assert not result.exists() and list((ttl_api.state / "results").iterdir()) == []
    q = ttl_api.http.get("/api/v1/queue").json()
    assert q["total_jobs"] == 0 and q["completed_count"] == 1


def _disk(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_disk_use_returns_to_baseline_and_cleanup_touches_nothing_else(ttl_api):
    """Inputs (3 MB each) and results take space while jobs live; once every job expired the state
    folder is back to its size before them, and files the cleanup does not own are still there."""
    import os

    from PIL import Image

    def settled():
        deadline = time.monotonic() + 30
        while ttl_api.http.get("/api/v1/queue").json()["total_jobs"]:
            assert time.monotonic() < deadline, "jobs did not expire"
            time.sleep(0.2)
        time.sleep(1.5)  # one more cleanup pass

    settled()
    state = ttl_api.state
    outside = state.parent / "tiny_20260101_000000_s1_deadbeef.png"  # a result's name, outside the folder
    outside.write_bytes(b"not ours")
    stray = state / "results" / "operator-notes.txt"  # inside, but not a result file
    stray.write_text("keep me")
    baseline = _disk(state)
    noise = io.BytesIO()
    Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3)).save(noise, "PNG", compress_level=0)
    ids = [ttl_api.submit(noise.getvalue(), seed=i).json()["job_id"] for i in range(5)]
    peak = _disk(state)
    assert peak > baseline + 10_000_000, (baseline, peak)  # five 3 MB inputs, stored
    assert [ttl_api.wait(i)["status"] for i in ids] == ["completed"] * 5
    settled()
    after = _disk(state)
    try:
        assert after <= baseline, (baseline, peak, after)
        assert outside.read_bytes() == b"not ours" and stray.read_text() == "keep me"
    finally:
        outside.unlink()
        stray.unlink()
