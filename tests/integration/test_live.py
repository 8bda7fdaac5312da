"""Issue 4 against real Serve apps on the tiny model: events, cancel, idempotency, stations, webhooks."""

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import IMAGE, Receiver, read_events, wait_for

pytestmark = pytest.mark.integration


def test_events_stream_states_progress_and_ends_with_completed(api):
    job_id = api.submit(IMAGE, preset="slow", seed=1).json()["job_id"]
    events = read_events(api, job_id)
    names = [n for n, _ in events if n]
    assert names[0] == "status" and names[-1] == "completed" and names.count("completed") == 1
    final = events[-1][1]
    assert final["status"] == "completed" and final["progress"] == 1.0 and final["result_path"]
    steps = [d["step"] for n, d in events if n == "progress"]
    assert steps and steps == sorted(steps) and max(steps) <= 8  # per-step progress, never backwards
    assert any(d["status"] == "processing" for n, d in events if n in ("status", "progress"))
    assert api.http.get(f"/api/v1/status/{job_id}/events").status_code == 200  # a finished job: one event, end
    r = api.http.get(f"/api/v1/status/{uuid.uuid4()}/events")
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_twenty_listeners_on_one_job_all_see_it_to_the_end(api):
    job_id = api.submit(IMAGE, preset="slow", seed=6).json()["job_id"]
    with ThreadPoolExecutor(20) as pool:
        streams = list(pool.map(lambda _: read_events(api, job_id), range(20)))
    for events in streams:
        names = [n for n, _ in events if n]
        assert names[-1] == "completed" and names.count("completed") == 1
    view = api.status(job_id).json()
    assert view["status"] == "completed" and view["run_seconds"] > 0


def test_status_shows_progress_and_eta_while_running(api):
    job_id = api.submit(IMAGE, preset="slow", seed=2).json()["job_id"]
    seen = wait_for(lambda: (b := api.status(job_id).json())["status"] == "processing" and b["step"] >= 2 and b)
    assert seen["total_steps"] == 8 and 0 < seen["progress"] < 1 and seen["eta_seconds"] >= 0
    api.wait(job_id)


def test_cancel_queued_and_running_jobs(api):
    api.drain()
    running, queued, last = [api.submit(IMAGE, preset=p, seed=s).json()["job_id"]
                             for p, s in (("long", 10), ("slow", 11), ("slow", 12))]
    wait_for(lambda: api.status(running).json()["step"] >= 1)
    r = api.http.delete(f"/api/v1/status/{queued}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = api.http.post(f"/api/v1/status/{running}/cancel")  # the POST spelling
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    cancelled_at = time.monotonic()
    # the worker stops within a step and takes the next job at once
    wait_for(lambda: api.status(last).json()["status"] == "processing", timeout=10)
    assert time.monotonic() - cancelled_at < 5
    stopped = api.status(running).json()
    assert stopped["status"] == "cancelled" and stopped["step"] < 40 and stopped["result_path"] is None
    assert api.status(queued).json()["started_at"] is None  # never ran
    assert api.http.delete(f"/api/v1/status/{running}").status_code == 200  # twice: harmless
    assert api.wait(last)["status"] == "completed"
    r = api.http.delete(f"/api/v1/status/{last}")
    assert r.status_code == 409 and "already completed" in r.json()["detail"]
    assert api.http.delete(f"/api/v1/status/{uuid.uuid4()}").status_code == 404
    r = api.http.get(f"/api/v1/status/{running}/result")
    assert r.status_code == 404 and "cancelled" in r.json()["detail"]


def test_idempotent_duplicates_make_one_job_even_when_concurrent(api):
    api.drain()
    before = api.http.get("/api/v1/queue").json()
    key = str(uuid.uuid4())

    def send(_):
        return api.http.post("/api/v1/submit", files={"image": ("in.png", IMAGE, "image/png")},
                             data={"instruction": "make it blue", "seed": "5"}, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))
    assert [r.status_code for r in answers] == [200] * 20
    assert len({r.json()["job_id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 19
    job_id = answers[0].json()["job_id"]
    assert api.wait(job_id)["status"] == "completed"
    after = api.http.get("/api/v1/queue").json()
    assert after["total_jobs"] == before["total_jobs"] + 1  # no second job ...
    assert after["completed_count"] == before["completed_count"] + 1  # ... and no second model call
    again = send(0)
    assert again.json()["job_id"] == job_id and again.json()["status"] == "completed"
    r = api.http.post("/api/v1/submit", files={"image": ("in.png", IMAGE, "image/png")},
                      data={"instruction": "make it red", "seed": "5"}, headers={"Idempotency-Key": key})
    assert r.status_code == 422 and "different request" in r.json()["detail"]
    r = api.http.post("/api/v1/submit", files={"image": ("in.png", IMAGE, "image/png")},
                      data={"instruction": "x"}, headers={"Idempotency-Key": "k" * 300})
    assert r.status_code == 400 and "Idempotency-Key" in r.json()["detail"]


def test_edit_client_that_goes_away_cancels_its_job(api):
    api.drain()
    key = str(uuid.uuid4())
    form = {"instruction": "long one", "seed": "3", "preset": "long"}
    # a station of its own that gives up waiting and closes its connection
    with httpx.Client(base_url=api.base, headers={"X-API-Key": api.key}) as station:
        with pytest.raises(httpx.ReadTimeout):
            station.post("/api/v1/edit", files={"image": ("in.png", IMAGE, "image/png")}, data=form,
                         headers={"Idempotency-Key": key}, timeout=0.8)
    # the same request and key on /submit names the job the /edit created
    job_id = api.http.post("/api/v1/submit", files={"image": ("in.png", IMAGE, "image/png")}, data=form,
                           headers={"Idempotency-Key": key}).json()["job_id"]
    assert wait_for(lambda: api.status(job_id).json()["status"] == "cancelled", timeout=15,
                    show=lambda: api.status(job_id).json())


def test_stations_see_only_their_own_jobs_and_admin_sees_all(stations):
    a, b, ops = stations["A"], stations["B"], stations["ops"]
    job = a.submit(IMAGE, seed=1).json()
    job_id = job["job_id"]
    assert a.status(job_id).json()["station"] == "A"
    unknown = b.status(str(uuid.uuid4())).json()["detail"]
    for r in (b.status(job_id), b.http.delete(f"/api/v1/status/{job_id}"),
              b.http.get(f"/api/v1/status/{job_id}/result"), b.http.get(f"/api/v1/status/{job_id}/events")):
        assert r.status_code == 404 and r.json()["detail"] == unknown.replace(unknown.split()[1], job_id)
    assert ops.status(job_id).status_code == 200
    assert a.wait(job_id)["status"] == "completed"
    assert a.http.get(f"/api/v1/status/{job_id}/result").status_code == 200
    assert b.http.get("/api/v1/queue").status_code == 200  # the queue view stays global
    assert a.as_key("test-key-" + "x" * 24).status(job_id).status_code == 401  # single-key file not used here


def test_fair_order_and_per_station_limit(stations):
    a, b = stations["A"], stations["B"]
    a0 = a.submit(IMAGE, preset="long", seed=0).json()["job_id"]  # holds the worker while the others queue
    wait_for(lambda: a.status(a0).json()["status"] == "processing")
    a_ids = [a.submit(IMAGE, preset="slow", seed=s).json()["job_id"] for s in (1, 2)]
    r = a.submit(IMAGE, preset="slow", seed=3)
    assert r.status_code == 429 and "its own limit" in r.json()["detail"] and int(r.headers["Retry-After"]) >= 1
    b_ids = [b.submit(IMAGE, preset="slow", seed=s).json()["job_id"] for s in (1, 2)]
    expected = [b_ids[0], a_ids[0], b_ids[1], a_ids[1]]  # B was never served: it goes first
    ops = stations["ops"]
    assert [ops.status(j).json()["position"] for j in expected] == [1, 2, 3, 4]
    assert a.http.delete(f"/api/v1/status/{a0}").json()["status"] == "cancelled"  # now let them run
    started: list[str] = []

    def record():
        for j in expected:
            if j not in started and ops.status(j).json()["status"] != "queued":
                started.append(j)
        return len(started) == len(expected)

    wait_for(record, timeout=60, every=0.05)
    assert started == expected
    for j in expected:
        ops.wait(j)


def test_webhook_delivered_signed_and_retried(stations):
    from serve_app.webhooks import verify

    a = stations["A"]
    receiver = Receiver(fail_first=1)
    try:
        job_id = a.submit(IMAGE, seed=4, webhook_url=receiver.url).json()["job_id"]
        assert a.wait(job_id)["status"] == "completed"
        wait_for(lambda: len(receiver.requests) >= 2, timeout=20)  # a 500, then a retry
        headers, body = receiver.requests[-1]
        secret = (a.state / "webhook_secret").read_bytes().strip()
        assert verify(secret, headers["X-Webhook-Timestamp"], body, headers["X-Webhook-Signature"])
        assert not verify(b"wrong", headers["X-Webhook-Timestamp"], body, headers["X-Webhook-Signature"])
        payload = json.loads(body)
        assert payload["job_id"] == job_id and payload["status"] == "completed" and payload["result_path"]
        assert headers["X-Webhook-Id"] == job_id
        time.sleep(1.5)
        assert len(receiver.requests) == 2  # delivered once it succeeded: no more attempts
        # a cancelled job notifies too
        cancelled = a.submit(IMAGE, preset="long", seed=5, webhook_url=receiver.url).json()["job_id"]
        a.http.delete(f"/api/v1/status/{cancelled}")
        wait_for(lambda: any(json.loads(b)["job_id"] == cancelled for _, b in receiver.requests), timeout=20)
    finally:
        receiver.close()


def test_webhook_events_choose_which_changes_call_the_hook(stations):
    a = stations["A"]
    receiver = Receiver(fail_first=0)
    try:
        both = a.submit(IMAGE, seed=6, webhook_url=receiver.url, webhook_events="started,completed").json()["job_id"]
        ended = a.submit(IMAGE, seed=7, webhook_url=receiver.url, webhook_events="cancelled").json()["job_id"]
        assert a.wait(both)["status"] == "completed" and a.wait(ended)["status"] == "completed"
        wait_for(lambda: len(receiver.requests) >= 2, timeout=20)
        time.sleep(1.5)  # anything more would have arrived by now
        calls = [(headers["X-Webhook-Event"], json.loads(body)) for headers, body in receiver.requests]
        assert [(event, body["job_id"], body["status"]) for event, body in calls] == [
            ("started", both, "processing"), ("completed", both, "completed")]  # none for `ended`
    finally:
        receiver.close()
    r = a.submit(IMAGE, webhook_url=receiver.url, webhook_events="finished")
    assert r.status_code == 400 and "Unknown webhook event 'finished'" in r.json()["detail"]


def test_webhook_hosts_outside_the_allow_list_are_refused(stations, api):
    r = stations["A"].submit(IMAGE, webhook_url="http://10.0.0.1/hook")
    assert r.status_code == 400 and "allow-list" in r.json()["detail"]
    r = api.submit(IMAGE, webhook_url="http://127.0.0.1:9/hook")  # the main app allows no host
    assert r.status_code == 400 and "not enabled" in r.json()["detail"]
