"""A worker starting from none (``worker.autoscaling`` with ``min_workers: 0``): since when jobs wait
for one, when it should be ready, and how long starts really take. Plain Python with an injected
clock (no Ray), unit-tested like ``core``.

A start is measured from the moment a job waited with no worker ready to the moment one is
ready to take jobs (the replica scheduled, perhaps a node added, the process started, the weights
loaded); each measurement moves the expectation (an exponential moving average, seeded with
``worker.autoscaling.cold_start_seconds``), so the ETAs of jobs waiting for a cold worker come from
what this cluster's starts take.
"""

import time
from collections.abc import Callable

EMA_WEIGHT = 0.5  # starts are few: the newest one counts for half


class ColdStart:
    def __init__(self, expected_s: float, clock: Callable[[], float] = time.time):
        self.expected_s = expected_s
        self.measured: list[float] = []  # every start measured, for health and the benchmarks
        self._clock = clock
        self._since: float | None = None  # when jobs began to wait with no worker ready

    def update(self, jobs_waiting: bool, worker_ready: bool) -> float | None:
        """The state now; answers when a worker should be ready (this clock) while jobs wait for
        one, None when a worker is ready or nothing waits. A worker that becomes ready ends the
        wait and is measured."""
        now = self._clock()
        if worker_ready:
            if self._since is not None:
                took = now - self._since
                self.measured.append(round(took, 3))
                self.expected_s += EMA_WEIGHT * (took - self.expected_s)
                self._since = None
            return None
        if not jobs_waiting:
            self._since = None  # (nothing waits: a start, if any, is nobody's wait)
            return None
        if self._since is None:
            self._since = now
        return self._since + self.expected_s

    @property
    def waiting(self) -> bool:
        return self._since is not None

    def overdue(self) -> bool:
        """Jobs have waited for a worker three times as long as a start takes (a minute at least):
        time to ask whether any node could hold one (a cluster autoscaler had its chance)."""
        return self._since is not None and self._clock() - self._since > 3 * max(self.expected_s, 60.0)
