"""Work started now and finished later on the running event loop (a report sent without waiting, a
deadline pass, a cancel for an abandoned /edit), held until it ends."""

import asyncio
import contextvars
import logging
from collections.abc import Coroutine


class Background:
    """The tasks one replica started and has not seen end. asyncio keeps only a weak reference to a
    task, so one that nobody holds can be collected before it finishes: this holds each until it
    ends. Nobody awaits them, so one that fails is logged here (``what`` names whose it was), never lost."""

    def __init__(self, log: logging.Logger, what: str):
        self._log, self._what = log, what
        self._tasks: set[asyncio.Task] = set()

    def start(self, coro: Coroutine, context: contextvars.Context | None = None) -> asyncio.Task:
        """``coro`` as a task on the running loop (in ``context``, when given: a fresh one keeps it
        out of a cancelled request's own)."""
        task = asyncio.get_running_loop().create_task(coro, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("%s background work failed: %r", self._what, task.exception())

    def __len__(self) -> int:
        return len(self._tasks)
