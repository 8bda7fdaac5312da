"""Background work (``background.Background``): held until it ends, and a failure logged with whose it was."""

import asyncio
import contextvars
import gc
import logging

from serve_app.background import Background

log = logging.getLogger("test.background")
MARK = contextvars.ContextVar("mark", default="outside")


def test_work_is_held_until_it_ends_and_a_failure_is_logged(caplog):
    seen = []

    async def work():
        await asyncio.sleep(0.05)
        seen.append(MARK.get())

    async def fails():
        raise RuntimeError("disk full")

    async def main():
        background = Background(log, "[Test]")
        MARK.set("request")
        background.start(work())  # nobody else holds the task
        background.start(work(), context=contextvars.Context())
        background.start(fails())
        gc.collect()
        assert len(background) == 3
        await asyncio.sleep(0.2)
        assert len(background) == 0

    with caplog.at_level("ERROR", logger="test.background"):
        asyncio.run(main())
    assert sorted(seen) == ["outside", "request"]  # both ran; the fresh context does not see the request's
    assert [r.getMessage() for r in caplog.records] == ["[Test] background work failed: RuntimeError('disk full')"]
