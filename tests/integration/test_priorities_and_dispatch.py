"""Issue 14 through the real Serve app on the tiny model: priorities carried by keys (the order jobs
start in, the starvation bound, truthful positions, the 403 for asking above the key), and preset
affinity on two faked-GPU workers (the switches the queue counts)."""

import time

import pytest
import yaml

from tests.helpers import photo, remove_app, wait_for

pytestmark = pytest.mark.integration
IMAGE = photo(64, 64)
KEYS = {"hi": "station-hi-key-" + "h" * 20, "lo": "station-lo-key-" + "l" * 20}


@pytest.fixture(scope="module")
def prio(cluster, deploy):
    keys = cluster["root"] / "priority-keys.yaml"
    keys.write_text(yaml.safe_dump({"hi": {"key": KEYS["hi"], "priority": "high"},
                                    "lo": {"key": KEYS["lo"], "priority": "low"}}))
    api = deploy("prio", "/prio", wait_workers=True, api_keys_file=str(keys), priority_max_passes=1,
                 worker={"num_cpus": 0})
    yield {name: api.as_key(key) for name, key in KEYS.items()}
    remove_app("prio")


def _starts(jobs: list[tuple[object, str]], timeout: float = 120) -> list[str]:
    """The order in which the jobs (each with the Api of its station) left the queue, watched by
    polling every 50 ms (each job runs for about a second)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while len(seen) < len(jobs):
        assert time.monotonic() < deadline, seen
        for api, job_id in jobs:
            if job_id not in seen and api.status(job_id).json()["status"] != "queued":
                seen.append(job_id)
        time.sleep(0.05)
    return seen


def test_higher_priority_starts_first_and_a_passed_job_is_not_starved(prio):
    hi, lo = prio["hi"], prio["lo"]
    blocker = lo.submit(IMAGE, preset="slow").json()["job_id"]
    wait_for(lambda: lo.status(blocker).json()["status"] == "processing", 60)
    low = lo.submit(IMAGE, preset="slow").json()["job_id"]
    assert lo.status(low).json()["position"] == 1
    highs = [hi.submit(IMAGE, preset="slow", seed=i).json()["job_id"] for i in range(3)]
    # Positions count the bound already: the low job is passed once (priority_max_passes: 1), then next.
    assert lo.status(low).json()["position"] == 2
    assert [hi.status(j).json()["position"] for j in highs] == [1, 3, 4]
    assert lo.status(low).json()["priority"] == "low" and hi.status(highs[0]).json()["priority"] == "high"
    expected = [highs[0], low, highs[1], highs[2]]
    assert _starts([(hi, highs[0]), (lo, low), (hi, highs[1]), (hi, highs[2])]) == expected
    assert lo.wait(blocker)["status"] == lo.wait(low)["status"] == "completed"
    assert all(hi.wait(j)["status"] == "completed" for j in highs)


def test_a_request_may_lower_its_priority_but_not_raise_it(prio):
    hi, lo = prio["hi"], prio["lo"]
    refused = lo.submit(IMAGE, preset="speck", priority="high")
    assert refused.status_code == 403
    assert refused.json()["detail"] == ("Priority high is higher than this station's key allows (low); ask for "
                                        "low or lower, or leave priority out.")
    lowered = hi.submit(IMAGE, preset="speck", priority="low").json()
    assert hi.status(lowered["job_id"]).json()["priority"] == "low"
    assert hi.wait(lowered["job_id"])["status"] == "completed"


def _switches(api) -> int:
    return api.http.get("/api/v1/queue").json()["preset_switches"]


def _both_waiting(api) -> bool:
    workers = api.http.get("/api/v1/health").json()["workers"]
    return len(workers) == 2 and all(w["state"] == "ready" for w in workers)


def test_jobs_go_to_the_idle_worker_that_holds_their_preset(multi_api):
    """Rounds of two jobs (presets la and lb) reaching two idle workers: after the first round each
    worker holds one of them, and from then on every job goes to the worker holding its preset."""
    multi_api.drain()
    rounds = []
    for r in range(5):
        wait_for(lambda: _both_waiting(multi_api), 60, every=0.1)
        before = _switches(multi_api)
        ids = [multi_api.submit(IMAGE, preset=p, seed=r).json()["job_id"] for p in ("la", "lb")]
        done = [multi_api.wait(j) for j in ids]
        assert [d["status"] for d in done] == ["completed", "completed"]
        rounds.append((_switches(multi_api) - before, {d["model"]: d["worker"] for d in done}))
    assert [n for n, _ in rounds[1:]] == [0, 0, 0, 0], rounds
    assert len({tuple(sorted(w.items())) for _, w in rounds[1:]}) == 1, rounds  # the same worker each time
    assert rounds[0][0] <= 2, rounds  # the first round: each worker switched at most once
