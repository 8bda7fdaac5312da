"""Fan-out of a job's status changes to every station listening to it, inside one ingress replica.

However many streams follow a job, the replica keeps *one* long poll on the queue for it (the
"feed") and hands each change to all of that job's listeners, so 50 listeners cost the queue what
one does. A feed starts with its first listener and stops with its last, or when the job ends.

Guarantees: a listener first gets the job's latest view, then each later view it has not seen (a
listener slower than the changes skips to the newest: views are whole snapshots, never deltas), and
always the final one; ``None`` when nothing changed for ``heartbeat_s`` seconds. No Ray import: the
queue call is injected, so this is unit-tested with a fake.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from ..contract.protocol import JobView

# watch(job_id, last_signature, timeout) -> the new view, or None after timeout; raises when gone
Watch = Callable[[str, tuple | None, float], Awaitable[JobView | None]]


@dataclass
class _Feed:
    view: JobView
    version: int = 0
    listeners: int = 0
    error: BaseException | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task | None = None

    def publish(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = asyncio.Event()


class JobEvents:
    def __init__(self, watch: Watch, heartbeat_s: float = 10.0):
        self._watch, self.heartbeat_s = watch, heartbeat_s
        self._feeds: dict[str, _Feed] = {}

    @property
    def feeds(self) -> int:
        return len(self._feeds)

    async def _pump(self, job_id: str, feed: _Feed) -> None:
        while not feed.view.terminal:
            try:
                view = await self._watch(job_id, feed.view.signature(), self.heartbeat_s)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the job expired, or the queue is unreachable: tell listeners
                feed.error = exc
                feed.publish()
                return
            if view is not None:
                feed.view = view
                feed.publish()

    async def subscribe(self, job_id: str, first_view: JobView) -> AsyncIterator[JobView | None]:
        """Views of the job as it changes (``None``: a heartbeat is due); ends after a final view.
        Raises what the queue raised if the job vanishes while followed."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed(view=first_view)
            feed.pump = asyncio.get_running_loop().create_task(self._pump(job_id, feed))
        feed.listeners += 1
        seen = -1
        try:
            while True:
                if feed.version > seen:
                    seen = feed.version
                    if feed.error is not None:
                        raise feed.error
                    yield feed.view
                    if feed.view.terminal:
                        return
                    continue
                changed = feed.changed
                try:
                    await asyncio.wait_for(changed.wait(), self.heartbeat_s)
                except asyncio.TimeoutError:
                    yield None
        finally:
            feed.listeners -= 1
            if feed.listeners == 0 and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
                if feed.pump is not None:
                    feed.pump.cancel()
