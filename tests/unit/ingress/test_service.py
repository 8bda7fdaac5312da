"""The submit and read paths of ``EditService`` over the real queue replica's class, without Ray.

The queue object is called directly (as ``bench/load.py plain`` does), through a handle stand-in
that records every call: so the number of queue round trips a route costs is counted exactly.
"""

import asyncio
import io

import pytest
from PIL import Image

from serve_app.auth import Caller
from serve_app.config import build_settings
from serve_app.contract.queue_client import IngressQueue
from serve_app.errors import QueueFull
from serve_app.ingress import service as service_module
from serve_app.ingress.forms import EditFields
from serve_app.ingress.service import EditService
from serve_app.queue.actor import QueueActor

STATION = Caller("default")


class Recording:
    """``handle.method.remote(*args)`` on a local object, each call's method name recorded (the
    mirror's change feed apart)."""

    def __init__(self, target):
        self.target, self.calls = target, []

    def options(self, **_):
        return self  # (one process: no transports to choose)

    def __getattr__(self, name):
        method = getattr(self.target, name)
        calls = self.calls

        class _Method:
            @staticmethod
            def remote(*args):
                if name != "changes":
                    calls.append(name)
                return asyncio.ensure_future(method(*args))

        return _Method()


class File:
    def __init__(self, data: bytes):
        self.data, self.size = data, len(data)

    async def read(self) -> bytes:
        return self.data


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


async def queue_for(tmp_path, **args):
    settings = build_settings({"state_dir": str(tmp_path), **args})
    cls = QueueActor.func_or_class
    queue = cls.__new__(cls)
    await cls.__init__(queue, settings)
    return queue, settings


@pytest.fixture
def decodes(monkeypatch):
    """How many uploads the service decoded."""
    count = [0]
    real = service_module.check_and_decode

    def counting(*args):
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(service_module, "check_and_decode", counting)
    return count


def test_a_keyed_submit_is_one_queue_call_and_a_refusal_decodes_nothing(tmp_path, decodes):
    async def main():
        queue, settings = await queue_for(tmp_path, max_queue_size=2)
        handle = Recording(queue)
        service = EditService(IngressQueue(handle, grpc=False), settings)
        form = lambda seed: EditFields([File(png())], "make it blue", str(seed))  # noqa: E731

        # The mirror has not heard from the queue yet: it cannot tell there is room, so ask first.
        await service.submit(form(1), STATION, "key-1")
        assert handle.calls == ["admit", "submit"] and decodes[0] == 1
        service.mirror.start()
        while not service.mirror.fresh:
            await asyncio.sleep(0.01)

        handle.calls.clear()
        view, created = await service.submit(form(2), STATION, "key-2")
        assert created and handle.calls == ["submit"] and decodes[0] == 2  # the one round trip

        handle.calls.clear()
        assert (await service.status(view.job_id, STATION)).position == 2
        assert handle.calls == []  # read from the mirror, no queue hop (and it shows this replica's write)
        # Stats right after this replica's write come from the queue until the mirror has that write.
        while service.mirror.version < view.version:
            assert (await service.queue_stats())["queue_size"] == 2
            await asyncio.sleep(0.005)
        handle.calls.clear()
        assert (await service.queue_stats())["queue_size"] == 2 and handle.calls == []

        while service.mirror.has_room("default", None):  # the mirror learns the queue is full
            await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await service.submit(form(3), STATION, "key-3")
        assert handle.calls == ["admit"] and decodes[0] == 2  # refused before any decoding
        handle.calls.clear()
        again, created = await service.submit(form(2), STATION, "key-2")  # a retry while full: its job
        assert not created and again.job_id == view.job_id
        assert handle.calls == ["admit"] and decodes[0] == 2
        await service.mirror.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_reads_go_to_the_queue_while_the_mirror_is_stale(tmp_path):
    async def main():
        queue, settings = await queue_for(tmp_path)
        handle = Recording(queue)
        service = EditService(IngressQueue(handle, grpc=False), settings)
        view, _ = await service.submit(EditFields([File(png())], "x"), STATION, None)
        service.mirror._synced_at = None  # as after a failed feed call
        handle.calls.clear()
        assert (await service.status(view.job_id, STATION)).job_id == view.job_id
        assert handle.calls == ["status"]
        await service.mirror.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_deadline_is_enforced_when_it_falls_due_not_on_the_next_cleanup_pass(tmp_path):
    """The cleanup pass runs once a second; a 0.2 s deadline must not wait for it."""
    async def main():
        queue, settings = await queue_for(tmp_path)
        service = EditService(IngressQueue(Recording(queue), grpc=False), settings)
        view, _ = await service.submit(EditFields([File(png())], "x", deadline_seconds="0.2"), STATION, None)
        await asyncio.sleep(0.5)  # before the first cleanup pass (1 s after the queue started)
        ended = await service.status(view.job_id, STATION)
        assert ended.status.value == "cancelled"
        assert ended.error == "Cancelled: not finished within 0.2s (deadline_seconds)."
        await service.mirror.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_claim_ahead_leaves_the_job_to_a_worker_waiting_for_one(tmp_path):
    """A busy worker claiming its next job on its last step gets none while another worker waits:
    the waiting one starts the job now; once none waits, the claim ahead gets the next job."""
    async def main():
        queue, settings = await queue_for(tmp_path)
        service = EditService(IngressQueue(Recording(queue), grpc=False), settings)
        # "a" sorts first, so without the rule the matching would give the job to the busy worker
        waiting = asyncio.ensure_future(queue.next_task("b-idle", "tiny", 10.0))
        await asyncio.sleep(0.05)  # "b-idle" is now in its long poll
        first, _ = await service.submit(EditFields([File(png())], "x"), STATION, None)
        assert await queue.next_task("a-busy", "tiny", 0.0, True) is None
        assert (await asyncio.wait_for(waiting, 5)).job_id == first.job_id
        second, _ = await service.submit(EditFields([File(png())], "y"), STATION, None)
        assert (await queue.next_task("a-busy", "tiny", 0.0, True)).job_id == second.job_id
        assert (await queue.status(second.job_id, STATION)).status.value == "processing"
        await service.mirror.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
