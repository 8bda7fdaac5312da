"""The ingress's fan-out of job changes: one queue watch per job, however many listeners."""

import asyncio

import pytest

from serve_app.contract.protocol import JobStatus, JobView
from serve_app.errors import JobNotFound
from serve_app.ingress.events import JobEvents


def view(status, step=0):
    return JobView(job_id="j", status=JobStatus(status), position=None, created_at=None, started_at=None,
                   completed_at=None, result_path=None, result_seed=None, error=None, instruction="x", model="tiny",
                   estimated_wait_seconds=None, worker=None, progress=0.0, step=step, total_steps=4,
                   eta_seconds=None, station="default", run_seconds=None, attempts=0, priority="normal", preview_step=None)


class FakeQueue:
    """watch() answers with the next scripted change once it is released, counting the calls."""

    def __init__(self, changes):
        self.changes = list(changes)
        self.calls = 0
        self.release = asyncio.Event()

    async def watch(self, job_id, last, timeout):
        self.calls += 1
        await self.release.wait()
        item = self.changes.pop(0)
        if isinstance(item, BaseException):
            raise item
        await asyncio.sleep(0.001)
        return item


async def collect(events, job_id, first):
    return [v async for v in events.subscribe(job_id, first)]


def test_many_listeners_share_one_watch_and_all_get_the_final_view():
    async def main():
        queue = FakeQueue([view("processing", 1), view("processing", 2), view("completed", 4)])
        events = JobEvents(queue.watch, heartbeat_s=5)
        listeners = [asyncio.create_task(collect(events, "j", view("queued"))) for _ in range(50)]
        await asyncio.sleep(0.01)
        assert events.feeds == 1
        queue.release.set()
        results = await asyncio.gather(*listeners)
        assert queue.calls == 3  # one long poll per change, not one per listener
        for got in results:
            assert got[0] == view("queued") and got[-1] == view("completed", 4)
            assert [v.step for v in got] == sorted(v.step for v in got)
        assert events.feeds == 0  # the feed stops with the job

    asyncio.run(main())


def test_heartbeat_when_nothing_changes_and_feed_stops_with_its_last_listener():
    async def main():
        queue = FakeQueue([])
        events = JobEvents(queue.watch, heartbeat_s=0.05)
        stream = events.subscribe("j", view("queued"))
        assert await stream.__anext__() == view("queued")
        assert await stream.__anext__() is None  # heartbeat
        await stream.aclose()
        assert events.feeds == 0

    asyncio.run(main())


def test_a_job_that_vanishes_while_followed_raises_to_its_listeners():
    async def main():
        queue = FakeQueue([JobNotFound("j", 3600)])
        events = JobEvents(queue.watch, heartbeat_s=5)
        queue.release.set()
        with pytest.raises(JobNotFound):
            await collect(events, "j", view("queued"))

    asyncio.run(main())
