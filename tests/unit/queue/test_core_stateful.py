"""A Hypothesis state machine on the queue rules: for any sequence of submits, starts, finishes,
cancels, lost workers, expiries and restarts (through the SQLite store), the cap, FIFO order and the
states' rules hold, and no accepted job is lost."""

import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from serve_app.contract.protocol import JobStatus
from serve_app.errors import Conflict, QueueFull
from serve_app.queue.core import JobQueue
from serve_app.queue.jobstore import JobStore

MAX, TTL = 4, 100.0


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


class QueueMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = Clock()
        self.folder = Path(tempfile.mkdtemp(prefix="qsm-"))
        self.store = JobStore(self.folder / "jobs.sqlite3")
        self.q = self._queue()
        self.n = 0
        self.queued: list[str] = []  # the expected start order
        self.running: set[str] = set()
        self.final: dict[str, JobStatus] = {}
        self.accepted: set[str] = set()
        self.expired: set[str] = set()

    def _queue(self):
        return JobQueue(MAX, TTL, {"p": 1.0}, clock=self.clock)

    def _save(self, job_id):
        self.store.update(self.q.get(job_id))

    @rule()
    def submit(self):
        self.n += 1
        job_id = f"j{self.n}"
        full = len(self.queued) + len(self.running) >= MAX
        try:
            job = self.q.submit(job_id, instruction="x", preset="p", seed=self.n, payload=[b"img"])
        except QueueFull:
            assert full
            return
        assert not full
        self.store.save(job, job.payload)
        self.accepted.add(job_id)
        self.queued.append(job_id)

    @rule()
    def start(self):
        job = self.q.claim("w")
        if not self.queued:
            assert job is None
            return
        assert job.id == self.queued.pop(0)  # FIFO
        self._save(job.id)
        self.running.add(job.id)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data, ok):
        job_id = data.draw(st.sampled_from(sorted(self.running)))
        if ok:
            self.q.complete(job_id, f"r-{job_id}.png", 1.0)
        else:
            self.q.fail(job_id, "boom")
        self._save(job_id)
        self.running.discard(job_id)
        self.final[job_id] = JobStatus.COMPLETED if ok else JobStatus.FAILED

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def worker_lost(self, data):
        job_id = data.draw(st.sampled_from(sorted(self.running)))
        self.q.requeue(job_id)
        self._save(job_id)
        self.running.discard(job_id)
        # Back in submission order: ahead of every job never started (FIFO started it before them).
        self.queued = sorted(self.queued + [job_id], key=lambda j: int(j[1:]))

    @precondition(lambda self: self.accepted - self.expired)
    @rule(data=st.data())
    def cancel(self, data):
        job_id = data.draw(st.sampled_from(sorted(self.accepted - self.expired)))
        before = self.final.get(job_id)
        try:
            job, was_running = self.q.cancel(job_id)
        except Conflict:
            assert before in (JobStatus.COMPLETED, JobStatus.FAILED)
            return
        assert before in (None, JobStatus.CANCELLED)
        assert was_running == (job_id in self.running)
        self._save(job_id)
        if job_id in self.queued:
            self.queued.remove(job_id)
        self.running.discard(job_id)
        self.final[job_id] = JobStatus.CANCELLED

    @rule(seconds=st.sampled_from([1.0, 60.0, 150.0]))
    def time_passes(self, seconds):
        self.clock.t += seconds
        gone = self.q.expire()
        for job in gone:
            assert job.id in self.final  # only finished jobs expire
            assert job.completed_at <= self.clock.t - TTL
        self.store.delete([j.id for j in gone])
        self.expired |= {j.id for j in gone}

    @rule()
    def restart(self):
        """The queue dies and a new one is built from the store: running jobs stay running."""
        self.store.close()
        self.store = JobStore(self.folder / "jobs.sqlite3")
        self.q = self._queue()
        self.q.restore(self.store.load())

    @invariant()
    def cap_order_states_and_nothing_lost(self):
        assert self.q.occupancy == len(self.queued) + len(self.running) <= MAX
        assert set(self.q._jobs) == self.accepted - self.expired  # no accepted job lost
        assert self.q.order() == self.queued
        assert [self.q.position(self.q.get(i)) for i in self.queued] == list(range(1, len(self.queued) + 1))
        assert {j.id for j in self.q.running()} == self.running
        for job_id, status in self.final.items():
            if job_id not in self.expired:
                assert self.q.get(job_id).status is status
                assert self.q.get(job_id).payload is None  # inputs dropped once finished


TestQueueStateMachine = QueueMachine.TestCase
TestQueueStateMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
