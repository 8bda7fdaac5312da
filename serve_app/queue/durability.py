"""The queue's durability: every change of the core recorded in the job database, in order, on one I/O
thread (never on the event loop), and what health says when a write fails or the disk runs short.

A part of ``QueueActor`` (``actor``), as a mixin: plain Python, no Ray; it works on the state the
shell's ``__init__`` sets up (the core, the registry, the stores) on the replica's one event loop.
"""

import asyncio
import functools
import logging

from ..logs import for_job
from .job import Job

log = logging.getLogger(__name__)


class Durability:
    async def _io(self, fn, *args):
        """Run ``fn(*args)`` on the queue's I/O thread and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, functools.partial(fn, *args))

    async def _persist(self, job: Job) -> None:
        """Record ``job``'s state as it is now: the one path after every change of the core. A commit
        that fails (the state folder's disk full or read-only) is logged and shown in health; the
        queue carries on from memory, so no job is stuck on it."""
        await self._committed(job, self._persist_soon(job))

    def _persist_soon(self, job: Job) -> asyncio.Future:
        """``job``'s state as it is now, queued for the I/O thread at once (so in order with every
        other write) without waiting for it; the commit's future (await it with ``_committed``)."""
        return asyncio.get_running_loop().run_in_executor(self._io_pool, self.jobs.write, self.jobs.snapshot(job))

    async def _committed(self, job: Job, commit: asyncio.Future) -> None:
        try:
            await commit
            self.db_problem = None
        except Exception as exc:
            log.error("[JobQueue] Job %s: could not record its state: %s", job.id[:8], exc, extra=for_job(job.id))
            self.db_problem = (f"The job database could not be written ({type(exc).__name__}: {exc}); jobs "
                               "changed since then would not survive a restart. Check the state folder's disk.")

    async def _check_storage(self) -> None:
        min_free = int(self.settings.queue.min_free_disk_mb * 2**20)
        self.storage_problem = await asyncio.to_thread(self.store.problem, min_free)
        if self.store_failure and await asyncio.to_thread(self.store.problem, self.store_failure[1]) is None:
            self.store_failure = None  # writable again, with room for a result that size
