"""A worker's reports to the queue (``worker.reports``): an outcome is delivered until the queue answers
(its lease held meanwhile), progress goes without waiting, and heartbeats name only the jobs with
progress within the lease (all of them while a load runs)."""

import asyncio
import logging
import time

from serve_app.background import Background
from serve_app.contract.protocol import JobDone, Outcome, StepReport
from serve_app.worker.reports import Reports


class FlakyQueue:
    """The worker's queue client: ``job_done`` fails ``failures`` times, then answers."""

    def __init__(self, failures: int):
        self.failures, self.calls, self.progress_seen = failures, 0, []

    async def job_done(self, worker_id, report):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("the queue replica is restarting")
        return Outcome.NOT_YOURS

    async def progress(self, worker_id, report):
        self.progress_seen.append(report)
        raise ConnectionError("lost")  # a lost progress report is not retried


def test_an_outcome_is_delivered_through_failures_and_a_lost_progress_report_is_not_retried():
    async def main():
        queue = FlakyQueue(failures=1)
        reports = Reports(queue, "w1", lease_s=0.2, background=Background(logging.getLogger("t"), "[T]"))
        reports.touch("job")
        reports.progress("job", 1, 4, None)
        start = time.monotonic()
        await reports.outcome(JobDone("job", b"png", 1.0))
        assert queue.calls == 2 and time.monotonic() - start >= 0.9  # one retry, after its backoff
        assert "job" not in reports.active  # no longer this replica's
        await asyncio.sleep(0.05)
        assert queue.progress_seen == [StepReport("job", 1, 4, None)]

    asyncio.run(asyncio.wait_for(main(), 10))


def test_heartbeats_name_jobs_with_progress_within_the_lease_or_all_while_loading():
    reports = Reports(FlakyQueue(0), "w1", lease_s=0.1, background=None)
    reports.touch("old")
    time.sleep(0.15)
    reports.touch("new")
    assert reports.working_on(loading=False) == ["new"] and reports.stuck(loading=False) == ["old"]
    assert reports.working_on(loading=True) == ["old", "new"] and reports.stuck(loading=True) == []
    assert reports.heartbeat_s == 0.1 / 3  # three heartbeats per lease
