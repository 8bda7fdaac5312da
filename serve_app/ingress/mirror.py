"""Each ingress replica's mirror of the queue: job views, queue stats and health, read without a hop.

One pump per replica keeps one long poll open on the queue's change feed (``QueueActor.changes``):
the queue answers as soon as anything changed after the version the mirror holds, and at least
every ``refresh_s`` seconds with every unfinished job's view made anew (ETAs tick with time), so a
status poll, ``GET /queue``, ``/health`` and the events streams are answered inside the replica.
Answers come at most every ``batch_s`` (100 ms): under load, the changes made meanwhile come in one
(each answer costs the queue replica a call; a denoising step on a GPU takes longer than that).

Guarantees:
- Served only while fresh: the mirror's last answer came less than ``stale_s`` seconds ago and the
  call since has not failed. Otherwise every read goes to the queue, as without a mirror: while the
  queue is away that is the same 503, and a replaced queue replica (a new ``epoch``) is read anew,
  whole, before the mirror serves again.
- A station sees only its own jobs: another station's job is "not found", the queue's answer.
- Read your writes, in this replica: a view this replica's own write got back (a submit, a cancel)
  is noted at once, and an older answer of the feed never replaces a newer view (each view carries
  the queue's version). A job the mirror does not know (submitted through another ingress replica a
  moment ago, or never) is asked of the queue. Stats, health and the other jobs' views after such a
  write come from the queue until the mirror has reached that write's version (a submit or cancel
  moves other jobs' positions), and the feed is asked for it at once, not after ``batch_s``.

No Ray, no HTTP: the feed call is injected, so this is unit-tested with a fake queue.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..auth import Caller
from ..contract.protocol import Changes, JobView
from ..errors import JobNotFound

log = logging.getLogger(__name__)
REFRESH_S = 1.0  # the queue answers at least this often, changed or not
BATCH_S = 0.1  # at most one answer per this long: under load, changes arriving meanwhile come in one answer
# (0.02 s cost 6 % of the jobs per minute under bench/load.py's 20 stations: BENCHMARKS.md, "Load")
STALE_S = 3.0  # no answer for this long: the mirror serves nothing until the next one

# fetch(epoch, since, timeout) -> the changes after version ``since`` of ``epoch`` (see QueueActor.changes)
Fetch = Callable[[str | None, int | None, float], Awaitable[Changes]]


class Mirror:
    def __init__(self, fetch: Fetch, cleanup_age_s: float, refresh_s: float = REFRESH_S, stale_s: float = STALE_S,
                 batch_s: float = BATCH_S, clock: Callable[[], float] = time.monotonic):
        self._fetch, self.cleanup_age_s = fetch, cleanup_age_s
        self.refresh_s, self.stale_s, self.batch_s, self._clock = refresh_s, stale_s, batch_s, clock
        self.views: dict[str, JobView] = {}
        self._open: set[str] = set()  # ids of the unfinished jobs in ``views``
        self.epoch: str | None = None
        self.version: int | None = None
        self.stats: dict | None = None
        self.health: dict | None = None
        self._synced_at: float | None = None  # clock of the last answer; None: not fresh
        self._required = 0  # stats and health only from this version on (this replica's last write)
        self._changed = asyncio.Event()
        self._behind = asyncio.Event()  # set by a write of this replica the feed has not brought yet
        self._task: asyncio.Task | None = None
        self._stopped = False

    # --- keeping it -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the pump on the running loop (once; again if it ever ended, unless stopped)."""
        if not self._stopped and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def stop(self) -> None:
        self._stopped = True  # (the pump also ends at its next turn should a cancel be swallowed in a wait)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _pump(self) -> None:
        delay, said = 0.1, False
        while not self._stopped:
            try:
                changes = await self._fetch(self.epoch, self.version, self.refresh_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the queue is away (restarting) or timed out: serve nothing
                if not said:
                    log.warning("[Ingress] The queue's change feed failed (%s); reads go to the queue until it "
                                "answers again", type(exc).__name__)
                    said = True
                self._synced_at = None
                self._publish()  # followers fall back to the queue now
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if said:
                log.info("[Ingress] The queue's change feed answers again")
            delay, said = 0.1, False
            self.apply(changes)
            # At most one answer per batch_s, unless this replica wrote meanwhile: then the feed is
            # asked at once, so the write's effect on other jobs (positions) shows without delay.
            if not self._caught_up:
                continue
            self._behind.clear()
            try:
                await asyncio.wait_for(self._behind.wait(), self.batch_s)
            except asyncio.TimeoutError:
                pass

    def apply(self, changes: Changes) -> None:
        """Take one answer of the feed."""
        if changes.epoch != self.epoch:  # another queue replica: nothing of the old one holds
            self.views, self._open, self._required = {}, set(), 0
        elif changes.full:  # keep only what this replica's writes noted after that answer was made
            self.views = {i: v for i, v in self.views.items() if v.version > changes.version}
            self._open = {i for i in self._open if i in self.views}
        for job_id in changes.removed:
            self.views.pop(job_id, None)
            self._open.discard(job_id)
        listed = set()
        for view in changes.views:
            listed.add(view.job_id)
            self._put(view)
        # An unfinished job the answer does not list is gone (a submit the queue could not store),
        # unless a write of this replica noted it after the answer was made.
        for job_id in [i for i in self._open if i not in listed and self.views[i].version <= changes.version]:
            del self.views[job_id]
            self._open.discard(job_id)
        self.epoch, self.version = changes.epoch, changes.version
        self.stats, self.health = changes.stats, changes.health
        self._synced_at = self._clock()
        self._publish()

    def _put(self, view: JobView) -> None:
        old = self.views.get(view.job_id)
        if old is not None and old.version > view.version:
            return
        self.views[view.job_id] = view
        if view.terminal:
            self._open.discard(view.job_id)
        else:
            self._open.add(view.job_id)

    def note(self, view: JobView) -> None:
        """A view this replica got from the queue itself (its answer to a write or a read): kept
        unless the mirror holds a newer one; stats and health wait for its version."""
        self._put(view)
        self.require(view.version)
        self._publish()

    def require(self, version: int) -> None:
        """Stats, health and the views of other jobs come from the queue until the mirror has
        reached ``version`` (a write changes other jobs too: the positions behind it)."""
        self._required = max(self._required, version)
        if not self._caught_up:
            self._behind.set()

    def _publish(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- reading it -----------------------------------------------------------------------------

    @property
    def fresh(self) -> bool:
        return self._synced_at is not None and self._clock() - self._synced_at < self.stale_s

    def job(self, job_id: str, caller: Caller) -> JobView | None:
        """The job's view; None when the mirror cannot answer (not fresh, or a job it does not
        know): ask the queue. Another station's job raises ``JobNotFound``, as the queue would."""
        if not self.fresh:
            return None
        view = self.views.get(job_id)
        if view is None:
            return None
        if not caller.admin and view.station != caller.station:
            raise JobNotFound(job_id, self.cleanup_age_s)
        # A view older than this replica's last write may have changed by it: ask the queue.
        return view if view.version >= self._required or self._caught_up else None

    @property
    def catching_up(self) -> bool:
        """Fresh, but behind this replica's last write: the feed's next answer (asked at once) brings it."""
        return self.fresh and not self._caught_up

    def _current(self, value):
        return value if self.fresh and self._caught_up else None

    @property
    def _caught_up(self) -> bool:
        """The feed has brought this replica's last write (its version), or there was none."""
        return (self.version or 0) >= self._required

    def queue_stats(self) -> dict | None:
        """``GET /queue``'s body, or None: ask the queue."""
        return self._current(self.stats)

    def has_room(self, station: str, max_per_station: int | None) -> bool:
        """Whether the queue, as of the latest answer, has room for one more job of ``station``
        (False also when the mirror cannot tell). A hint: the queue's submit decides."""
        if not self.fresh or self.stats is None or self.stats["queue_size"] >= self.stats["max_queue_size"]:
            return False
        return max_per_station is None or sum(
            1 for i in self._open if self.views[i].station == station) < max_per_station

    def queue_health(self) -> dict | None:
        """The queue's part of ``/health``, or None: ask the queue."""
        return self._current(self.health)

    async def changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the next answer or note; False if none came."""
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), max(timeout, 0))
            return True
        except asyncio.TimeoutError:
            return False
