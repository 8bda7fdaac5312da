"""A worker started from none (autoscaling to zero): the wait it is measured by, the ETAs and the
status sentence of the jobs waiting for it, and a worker that leaves. Fake clocks, no Ray."""

from serve_app.queue.cold_start import ColdStart
from serve_app.queue.core import JobQueue
from serve_app.queue.workers import WorkerRegistry


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


def test_a_start_is_measured_from_the_first_waiting_job_to_a_ready_worker():
    clock = Clock()
    cold = ColdStart(60.0, clock)
    assert cold.update(jobs_waiting=False, worker_ready=False) is None  # nothing waits: no start awaited
    assert cold.update(jobs_waiting=True, worker_ready=False) == clock.t + 60
    first = clock.t
    clock.t += 20
    assert cold.update(jobs_waiting=True, worker_ready=False) == first + 60  # counted from the first
    assert cold.waiting
    assert cold.update(jobs_waiting=True, worker_ready=True) is None
    assert cold.measured == [20.0] and cold.expected_s == 40.0  # halfway to what was measured
    assert not cold.waiting


def test_a_start_is_overdue_after_three_times_what_starts_take_and_a_minute_at_least():
    clock = Clock()
    cold = ColdStart(30.0, clock)
    assert not cold.overdue()
    cold.update(True, False)
    clock.t += 179
    assert not cold.overdue()  # 3 x a minute
    clock.t += 2
    assert cold.overdue()
    cold.update(True, True)
    assert not cold.overdue()


def test_a_wait_that_ends_without_a_worker_measures_nothing():
    clock = Clock()
    cold = ColdStart(30.0, clock)
    cold.update(True, False)
    clock.t += 5
    cold.update(False, False)  # the job was cancelled
    clock.t += 100
    cold.update(False, True)
    assert cold.measured == [] and cold.expected_s == 30.0


def test_jobs_waiting_for_a_starting_worker_say_so_and_count_their_eta_from_its_start():
    clock = Clock()
    q = JobQueue(10, 3600.0, {"fast": 10.0}, clock=clock)
    job = q.submit("job-0", instruction="edit", preset="fast", seed=1, payload=b"img")
    second = q.submit("job-1", instruction="edit", preset="fast", seed=2, payload=b"img")
    assert q.view(job).message is None and q.view(job).eta_seconds == 10.0
    version = q.version
    q.worker_starting(clock.t + 45)
    assert q.version > version  # the mirrors' views of the queued jobs change
    view = q.view(job)
    assert view.message.startswith("Waiting for a model worker to start (about 45 s more)")
    assert view.eta_seconds == 55.0 and view.estimated_wait_seconds == 55
    assert q.view(second).eta_seconds == 65.0  # behind the first, on the one worker
    assert [v.message is not None for v in q.active_views()] == [True, True]
    clock.t += 60  # later than expected: still "about 1 s", never a time in the past
    assert "about 1 s more" in q.view(job).message
    q.worker_starting(None)
    assert q.view(job).message is None and q.view(job).eta_seconds == 10.0
    q.claim("w1")
    q.worker_starting(clock.t + 30)
    assert q.view(job).message is None  # running: it waits for nobody


def test_a_worker_that_left_is_forgotten_and_a_late_report_does_not_bring_it_back():
    clock = Clock()
    reg = WorkerRegistry(lease_s=30, clock=clock)
    reg.seen("a")
    reg.seen("b")
    reg.leave("a")
    assert reg.has_left("a") and not reg.has_left("b")
    info, new = reg.seen("a")  # a heartbeat already on its way
    assert not new and [w.id for w in reg.alive()] == ["b"]
    info.state = "busy"  # changing the record it got changes nothing kept
    assert "a" not in reg.workers
