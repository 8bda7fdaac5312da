"""The queue's change feed, for the ingress replicas' mirrors: a version that grows with every change,
and what changed after a version.

``JobQueue`` bumps it at every change of a job or of its counters, notes each job that reached a final
state and each job removed, and answers ``changes(since)`` from it: every unfinished job's view, the
finished jobs changed after ``since`` and the ids removed after it. A reader that applies each
answer holds every job's current view; one whose ``since`` is too old (its removals forgotten) or
unknown (another replica's) gets everything (``full``).
"""

from collections import deque
from collections.abc import Callable

from .job import Job

REMOVALS_KEPT = 10_000  # the feed remembers this many removed ids; an older reader resyncs


class ChangeFeed:
    def __init__(self):
        self.version = 0
        self._removals: deque[tuple[int, str]] = deque()  # (version, job id) of removed jobs
        self._removals_floor = 0  # removals at or before this version were forgotten
        # Finished jobs in the order they finished, (version, id): a delta walks back only to ``since``.
        self._ended: deque[tuple[int, str]] = deque()

    def bump(self, *jobs: Job) -> None:
        """A change (of these jobs, if any): the version grows, and each job carries it."""
        self.version += 1
        for job in jobs:
            job.changed = self.version

    def ended(self, job: Job) -> None:
        """``job`` just reached a final state (and was bumped)."""
        self._ended.append((job.changed, job.id))

    def removed(self, job_ids: list[str]) -> None:
        self.bump()
        self._removals.extend((self.version, job_id) for job_id in job_ids)
        while len(self._removals) > REMOVALS_KEPT:
            self._removals_floor = self._removals.popleft()[0]

    def forget_ended(self, exists: Callable[[str], bool]) -> None:
        """Drop the oldest finished jobs that no longer exist (expired)."""
        while self._ended and not exists(self._ended[0][1]):
            self._ended.popleft()

    def full(self, since: int | None) -> bool:
        """Whether a reader at ``since`` needs everything."""
        return since is None or since < self._removals_floor or since > self.version

    def since(self, since: int) -> tuple[list[tuple[int, str]], list[str]]:
        """(the (version, id) of the jobs that ended after ``since``, oldest first; the ids removed
        after it), for a reader that does not need everything."""
        ended = []
        for version, job_id in reversed(self._ended):  # newest first, back to ``since``
            if version <= since:
                break
            ended.append((version, job_id))
        return ended[::-1], [job_id for version, job_id in self._removals if version > since]
