"""A changed config deployed over a live app (what `serve deploy` does): every deployment is replaced
while one job runs and others wait, and no accepted job is lost, none runs out of order, and the
running one completes or runs again once. Stations polling meanwhile get 200 or 503, nothing else;
how many were refused, over how long, and the slowest answer are printed (BENCHMARKS.md)."""

import threading
import time

import httpx

from tests.helpers import IMAGE, wait_for

LONGER = {"base": "builtin:tiny", "steps": 150, "cfg_scale": 1.0, "resolution": 384, "nominal_seconds": 10.0}
FINAL = ("completed", "failed", "cancelled")


def test_a_redeploy_loses_no_job_and_keeps_their_order(deploy, remove_after):
    common = {"worker": {"num_cpus": 0}, "presets": {"longer": LONGER}}
    api = deploy("redeploy", "/redeploy", wait_workers=True, **common)
    remove_after("redeploy")
    running = api.submit(IMAGE, "a long one", preset="longer", seed=1).json()["job_id"]
    wait_for(lambda: api.status(running).json()["step"] >= 1, timeout=60)
    queued = [api.submit(IMAGE, f"queued {i}", preset="speck", seed=i).json()["job_id"] for i in range(3)]
    # a station repeating one submit with its Idempotency-Key: 200 (that job) while the queue answers
    key, probe = "redeploy-probe", {"instruction": "probe", "preset": "speck", "seed": "9"}

    def replay():
        return api.http.post("/api/v1/submit", files={"image": ("in.png", IMAGE, "image/png")}, data=probe,
                             headers={"Idempotency-Key": key}, timeout=30)

    probe_id = replay().json()["job_id"]
    seen: list[tuple[float, int | str, float]] = []  # (asked at, answer, seconds it took)
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            t = time.monotonic()
            try:
                code: int | str = replay().status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            seen.append((t, code, time.monotonic() - t))
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.monotonic()
    try:
        # the changed config: another station limit and a new preset
        deploy("redeploy", "/redeploy", wait_workers=True, max_jobs_per_station=50,
               **{**common, "presets": {"longer": LONGER, "newer": {**LONGER, "steps": 2}}})
        redeployed = time.monotonic() - started
        jobs = [running, *queued, probe_id]
        wait_for(lambda: all(api.status(j).json()["status"] in FINAL for j in jobs), timeout=180, every=0.5,
                 show=lambda: [api.status(j).json()["status"] for j in jobs])
    finally:
        stop.set()
        poller.join(timeout=40)
    views = [api.status(j).json() for j in jobs]
    assert [v["status"] for v in views] == ["completed"] * 5, views
    assert views[0]["attempts"] in (1, 2)  # the running one completed, or ran again once
    starts = [v["started_at"] for v in views[1:4]]
    assert starts == sorted(starts)  # the queued ones kept their order
    assert api.http.get("/api/v1/queue").json()["total_jobs"] == 5  # nothing lost, nothing doubled
    assert "newer" in api.http.get("/api/v1/models").json()["models"]  # the new config is live
    codes = {code for _, code, _ in seen}
    assert codes <= {200, 503}, seen
    refused = [t for t, code, _ in seen if code != 200]
    window = (refused[-1] - refused[0]) if refused else 0.0
    slowest = max(took for _, _, took in seen)
    print(f"\nredeploy: {redeployed:.1f}s until healthy; {len(refused)} of {len(seen)} replays refused (503) "
          f"over {window:.1f}s; slowest answer {slowest:.1f}s")
