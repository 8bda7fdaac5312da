"""The queue's rules, with a fake clock: milliseconds, no Ray."""

import pytest

from serve_app.contract.protocol import JobStatus
from serve_app.errors import JobNotFound, QueueFull
from serve_app.queue.core import JobQueue
from serve_app.queue.job import iso


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


def make(max_size=10, ttl=3600.0, nominal=None):
    clock = Clock()
    q = JobQueue(max_size, ttl, nominal or {"fast": 10.0, "slow": 100.0}, clock=clock)
    return q, clock


def submit(q, i, preset="fast", payload=b"img"):
    return q.submit(f"job-{i}", instruction=f"edit {i}", preset=preset, seed=i, payload=payload)


def test_cap_counts_queued_plus_processing():
    q, _ = make(max_size=10)
    submit(q, 0)
    assert q.claim("w1").id == "job-0"  # one processing
    for i in range(1, 10):
        submit(q, i)  # nine queued: 10 in all
    with pytest.raises(QueueFull) as err:
        submit(q, 10)
    assert err.value.status_code == 429
    assert err.value.detail == "Queue is full (maximum 10 jobs). Please try again later."
    assert int(err.value.headers["Retry-After"]) >= 1
    assert q.stats()["queue_size"] == 10
    assert q.stats()["refused_count"] == 1


def test_fifo_claims_and_live_positions():
    q, _ = make()
    jobs = [submit(q, i) for i in range(4)]
    assert [q.position(j) for j in jobs] == [1, 2, 3, 4]
    assert q.claim("w").id == "job-0"
    assert [q.position(j) for j in jobs] == [None, 1, 2, 3]
    q.complete("job-0", "r.png", 5.0)
    assert q.claim("w").id == "job-1"
    assert [q.position(j) for j in jobs] == [None, None, 1, 2]
    assert q.claim("w").id == "job-2" and q.claim("w").id == "job-3" and q.claim("w") is None


def test_states_and_payload_dropped_when_finished():
    q, clock = make()
    job = submit(q, 0, payload=b"x" * 100)
    assert job.status is JobStatus.QUEUED and job.payload
    q.claim("w")
    assert job.status is JobStatus.PROCESSING and job.started_at == clock.t
    clock.t += 3
    q.complete(job.id, "res.png", 3.0)
    assert job.status is JobStatus.COMPLETED and job.payload is None and job.result_name == "res.png"
    other = submit(q, 1)
    q.claim("w")
    q.fail(other.id, "CUDA out of memory")
    assert other.status is JobStatus.FAILED and other.payload is None and other.error == "CUDA out of memory"
    view = q.view(other)
    assert view.result_seed is None and view.error == "CUDA out of memory"
    assert q.view(job).result_seed == 0 and q.view(job).result_path == "res.png"


def test_eta_uses_measured_times_and_running_remaining():
    q, clock = make(nominal={"fast": 10.0, "slow": 100.0})
    a, b, c = submit(q, 0, "slow"), submit(q, 1, "fast"), submit(q, 2, "fast")
    q.claim("w")
    clock.t += 40  # 60 s of the slow job left
    assert q.estimated_wait(a) == 60
    assert q.estimated_wait(b) == 60 + 10
    assert q.estimated_wait(c) == 60 + 10 + 10
    # measurements move the average (EMA seeded with the nominal time)
    q.complete(a.id, "a.png", run_seconds=40.0)
    q.claim("w")
    q.complete(b.id, "b.png", run_seconds=2.0)
    assert q.average_seconds("slow") == pytest.approx(100 + 0.3 * (40 - 100))
    assert q.average_seconds("fast") == pytest.approx(10 + 0.3 * (2 - 10))
    assert q.estimated_wait(c) == 8  # ceil(7.6)


def test_eta_spreads_over_worker_slots():
    q, _ = make(nominal={"fast": 10.0})
    jobs = [submit(q, i) for i in range(4)]
    q.worker_slots = 2
    assert [q.estimated_wait(j) for j in jobs] == [10, 10, 20, 20]


def test_retry_after_is_time_to_first_free_slot():
    q, clock = make(max_size=2, nominal={"fast": 10.0})
    submit(q, 0)
    submit(q, 1)
    q.claim("w")
    clock.t += 7
    with pytest.raises(QueueFull) as err:
        submit(q, 2)
    assert err.value.headers["Retry-After"] == "3"


def test_ttl_expiry_returns_removed_jobs_and_keeps_counters():
    q, clock = make(ttl=60)
    job = submit(q, 0)
    q.claim("w")
    q.complete(job.id, "r.png", 1.0)
    queued = submit(q, 1)
    clock.t += 59
    assert q.expire() == []
    clock.t += 1
    assert [j.id for j in q.expire()] == [job.id]
    with pytest.raises(JobNotFound) as err:
        q.get(job.id)
    assert err.value.detail == (f"Job {job.id} not found. It may have been cleaned up "
                                "(jobs are kept for 1 minute after completion).")
    assert q.get(queued.id) is queued  # unfinished jobs never expire
    stats = q.stats()
    assert stats["completed_count"] == 1 and stats["total_jobs"] == 1


def test_not_found_message_matches_contract_for_any_id():
    q, _ = make(ttl=3600)
    for job_id in ["abc123", "../../etc/passwd", "x" * 300]:
        with pytest.raises(JobNotFound) as err:
            q.get(job_id)
        assert err.value.status_code == 404
        assert err.value.detail.endswith("It may have been cleaned up (jobs are kept for 1 hour after completion).")
    assert "Job abc123 not found." in JobNotFound("abc123", 3600).detail


def test_queue_stats_shape():
    q, _ = make()
    submit(q, 0)
    submit(q, 1)
    q.claim("w")
    s = q.stats()
    assert {k: s[k] for k in ("queue_size", "max_queue_size", "queued_count", "processing_count",
                              "completed_count", "failed_count", "current_job_id", "total_jobs")} == {
        "queue_size": 2, "max_queue_size": 10, "queued_count": 1, "processing_count": 1,
        "completed_count": 0, "failed_count": 0, "current_job_id": "job-0", "total_jobs": 2}


def test_iso_is_utc_seconds():
    assert iso(0) == "1970-01-01T00:00:00"
    assert iso(None) is None


# --- cancel, progress, stations, fairness, idempotency (issue 4) -------------------------------------

def test_cancel_queued_never_runs_and_running_frees_its_slot():
    from serve_app.errors import Conflict

    q, clock = make(max_size=3)
    a, _, c = submit(q, 0), submit(q, 1), submit(q, 2)
    with pytest.raises(QueueFull):
        submit(q, 3)
    job, was_running = q.cancel("job-1")
    assert (job.status, was_running) == (JobStatus.CANCELLED, False) and job.payload is None
    assert [q.position(j) for j in (a, c)] == [1, 2]
    assert q.claim("w").id == "job-0" and q.claim("w").id == "job-2" and q.claim("w") is None  # job-1 never runs
    job, was_running = q.cancel("job-0")
    assert was_running and job.status is JobStatus.CANCELLED and q.stats()["processing_count"] == 1
    assert q.cancel("job-0") == (job, False)  # a second cancel is harmless
    with pytest.raises(KeyError):
        q.complete("job-0", "late.png")  # the worker's late report cannot resurrect it
    q.complete("job-2", "r.png", 1.0)
    with pytest.raises(Conflict) as err:
        q.cancel("job-2")
    assert err.value.status_code == 409 and "already completed" in err.value.detail
    with pytest.raises(JobNotFound):
        q.cancel("nope")
    assert q.stats()["cancelled_count"] == 2 and q.stats()["queue_size"] == 0
    assert q.view(job).status == "cancelled" and q.view(job).eta_seconds is None


def test_progress_gives_step_fraction_and_eta_from_measured_step_time():
    q, clock = make()
    job = q.submit("j", instruction="x", preset="fast", seed=1, total_steps=4)
    v = q.view(job)
    assert (v.progress, v.step, v.total_steps, v.eta_seconds) == (0.0, 0, 4, 10.0)
    q.claim("w")
    assert q.progress("j", 1, 4, 0.5) is job
    v = q.view(job)
    assert (v.progress, v.step, v.eta_seconds) == (0.25, 1, 1.5)  # 3 steps left x 0.5 s
    q.progress("j", 3, 4, 0.25)
    assert q.view(job).eta_seconds == 0.2  # 1 x 0.25, rounded
    q.complete("j", "r.png", 1.0)
    assert q.view(job).progress == 1.0 and q.view(job).step == 4
    assert q.progress("j", 4, 4, 0.1) is None  # not running any more


def test_fair_scheduling_takes_stations_in_turn():
    clock = Clock()
    q = JobQueue(20, 3600, {"fast": 1.0}, clock=clock, scheduling="fair")
    for i in range(4):
        q.submit(f"a{i}", instruction="x", preset="fast", seed=i, station="A")
    for i in range(2):
        q.submit(f"b{i}", instruction="x", preset="fast", seed=i, station="B")
    q.submit("c0", instruction="x", preset="fast", seed=0, station="C")
    assert q.order() == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]
    assert q.position(q.get("c0")) == 3 and q.position(q.get("a3")) == 7
    assert q.claim("w").id == "a0"
    q.submit("a4", instruction="x", preset="fast", seed=4, station="A")  # A is at the back now
    assert [q.claim("w").id for _ in range(7)] == ["b0", "c0", "a1", "b1", "a2", "a3", "a4"]
    fifo = JobQueue(20, 3600, {"fast": 1.0}, clock=clock)
    for name, st in [("a0", "A"), ("a1", "A"), ("b0", "B")]:
        fifo.submit(name, instruction="x", preset="fast", seed=0, station=st)
    assert fifo.order() == ["a0", "a1", "b0"]  # the contract's default: submission order


def test_station_limit_is_the_stations_own_429():
    from serve_app.errors import StationLimit

    clock = Clock()
    q = JobQueue(10, 3600, {"fast": 1.0}, clock=clock, max_per_station=2)
    q.submit("a0", instruction="x", preset="fast", seed=0, station="A")
    q.submit("a1", instruction="x", preset="fast", seed=0, station="A")
    with pytest.raises(StationLimit) as err:
        q.submit("a2", instruction="x", preset="fast", seed=0, station="A")
    assert err.value.status_code == 429 and "Station A" in err.value.detail and "its own limit" in err.value.detail
    assert int(err.value.headers["Retry-After"]) >= 1
    q.submit("b0", instruction="x", preset="fast", seed=0, station="B")  # others are not affected
    q.claim("w")
    q.complete("a0", "r.png")
    q.submit("a2", instruction="x", preset="fast", seed=0, station="A")  # room again


def test_idempotency_key_returns_the_same_job_even_when_full_and_refuses_another_request():
    clock = Clock()
    q = JobQueue(1, 60, {"fast": 1.0}, clock=clock)
    first = q.submit("j1", instruction="x", preset="fast", seed=0, station="A", idempotency_key="k",
                     fingerprint="f1")
    assert q.submit("j2", instruction="x", preset="fast", seed=0, station="A", idempotency_key="k",
                    fingerprint="f1") is first  # the queue is full, yet the retry gets its job
    with pytest.raises(QueueFull):  # another station's same key is another job
        q.submit("j3", instruction="x", preset="fast", seed=0, station="B", idempotency_key="k", fingerprint="f1")
    with pytest.raises(Exception) as err:
        q.submit("j4", instruction="y", preset="fast", seed=0, station="A", idempotency_key="k", fingerprint="f2")
    assert err.value.status_code == 422 and "different request" in err.value.detail
    q.claim("w")
    q.complete("j1", "r.png")
    clock.t += 61
    assert q.expire() == [first]
    again = q.submit("j5", instruction="y", preset="fast", seed=0, station="A", idempotency_key="k", fingerprint="f2")
    assert again.id == "j5"  # keys live as long as their job


def test_stations_see_only_their_own_jobs_unless_admin():
    q, _ = make()
    q.submit("a", instruction="x", preset="fast", seed=0, station="A")
    assert q.get_for("a", "A").id == "a" and q.get_for("a", "B", admin=True).id == "a"
    with pytest.raises(JobNotFound) as err:
        q.get_for("a", "B")
    assert err.value.detail.startswith("Job a not found.")


def test_fair_scheduling_serves_a_newcomer_before_the_station_just_served():
    clock = Clock()
    q = JobQueue(20, 3600, {"fast": 1.0}, clock=clock, scheduling="fair")
    for i in range(3):
        q.submit(f"a{i}", instruction="x", preset="fast", seed=i, station="A")
    assert q.claim("w").id == "a0"
    q.submit("b0", instruction="x", preset="fast", seed=0, station="B")
    q.submit("b1", instruction="x", preset="fast", seed=1, station="B")
    assert q.order() == ["b0", "a1", "b1", "a2"]
    q.cancel("b0")
    assert q.order() == ["b1", "a1", "a2"]


def test_requeued_jobs_go_back_in_submission_order_and_a_graceful_one_keeps_its_attempt():
    q, _ = make()
    for i in range(4):
        submit(q, i)
    first, second = q.claim("w1"), q.claim("w2")
    assert (first.attempts, second.attempts) == (1, 1)
    # Lost in the "wrong" order: still job-0, job-1 ahead of the never-started ones.
    q.requeue("job-1")
    q.requeue("job-0", charge=False)
    assert q.order() == ["job-0", "job-1", "job-2", "job-3"]
    assert [q.position(q.get(f"job-{i}")) for i in range(4)] == [1, 2, 3, 4]
    assert (q.get("job-0").attempts, q.get("job-1").attempts) == (0, 1)
    assert q.get("job-1").status is JobStatus.QUEUED and q.get("job-1").worker_id is None


def test_jobs_for_lists_a_stations_own_jobs_newest_first():
    q, _ = make()
    for i, station in enumerate("ABAB"):
        q.submit(f"job-{i}", instruction="x", preset="fast", seed=i, payload=b"i", station=station)
    assert [j.id for j in q.jobs_for("A")] == ["job-2", "job-0"]
    assert [j.id for j in q.jobs_for("A", limit=1)] == ["job-2"]
    assert [j.id for j in q.jobs_for("ops", admin=True)] == ["job-3", "job-2", "job-1", "job-0"]


def test_deadlines_cancel_a_job_not_started_or_not_finished_in_time_with_the_reason():
    from serve_app.errors import StartTooLate

    q, clock = make()
    running = q.submit("run", instruction="x", preset="fast", seed=1, deadline_s=30)
    waiting = q.submit("wait", instruction="x", preset="fast", seed=2, start_within_s=15)
    assert q.claim("w1").id == "run"
    clock.t += 14
    assert q.overdue() == []
    clock.t += 2  # 16 s: "wait" has not started within 15 s
    [(job, reason)] = q.overdue()
    assert job is waiting and reason == "Cancelled: not started within 15s (start_within_seconds)."
    q.cancel(job.id, reason)
    assert q.view(waiting).status is JobStatus.CANCELLED and q.view(waiting).error == reason
    clock.t += 15  # 31 s: "run" has not finished within 30 s
    [(job, reason)] = q.overdue()
    assert job is running and reason == "Cancelled: not finished within 30s (deadline_seconds)."
    _, was_running = q.cancel(job.id, reason)
    assert was_running and q.occupancy == 0 and q.overdue() == []
    # a start the queue already places later than asked is refused, and leaves no trace
    submit(q, 10)
    assert q.claim("w1")  # one running for 10 s (the preset's nominal time): the next starts in ~10 s
    with pytest.raises(StartTooLate) as refused:
        q.submit("late", instruction="x", preset="fast", seed=3, start_within_s=5)
    assert "would start in about 10s, later than its start_within_seconds (5s)" in refused.value.detail
    assert refused.value.headers["Retry-After"] == "5"
    assert q.occupancy == 1 and "late" not in {j.id for j in q.jobs_for("default", True, 100)}
    assert q.submit("fits", instruction="x", preset="fast", seed=4, start_within_s=11).start_by == clock.t + 11


def test_a_requeued_job_starts_its_progress_and_previews_over():
    q, _ = make()
    job = q.submit("p", instruction="x", preset="fast", seed=1, previews=True)
    q.claim("w")
    q.progress("p", 2, 4, 0.5)
    job.preview_step = 2
    q.requeue("p")
    assert (job.step, job.step_seconds, job.preview_step, job.previews) == (0, None, None, True)
    assert q.view(job).preview_step is None
