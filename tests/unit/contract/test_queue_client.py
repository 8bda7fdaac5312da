"""The typed queue clients (``contract.queue_client``): each call reaches the queue method of its name
with its arguments, on its transport (the calls that carry images or an object reference, and the
mirror's full resync, always as Ray calls; the rest by gRPC when ``internal_calls: grpc``); the
ingress's client raises a refusal the queue answered, and gives up after its time limit."""

import asyncio

import pytest

from serve_app.auth import Caller
from serve_app.contract.queue_client import IngressQueue, OperatorQueue, WorkerQueue
from serve_app.errors import JobNotFound

STATION = Caller("station-1")


class FakeHandle:
    """A DeploymentHandle's surface: ``options(_by_reference=...)``, then ``.method.remote(*args)``,
    whose answer here is (method, transport, args), or ``answers[method]``."""

    def __init__(self, by_reference: bool | None = None, answers: dict | None = None):
        self.by_reference, self.answers = by_reference, answers or {}

    def options(self, _by_reference: bool):
        return FakeHandle(_by_reference, self.answers)

    def __getattr__(self, name):
        transport = "ray" if self.by_reference else "grpc"

        async def remote(*args):
            answer = self.answers.get(name)
            if callable(answer):
                return await answer()
            return answer if answer is not None else (name, transport, args)

        return type("Method", (), {"remote": staticmethod(remote)})


INGRESS_CALLS = [  # (method, args, transport with internal_calls: grpc)
    ("admit", (STATION, "key", "fp"), "grpc"),
    ("submit", ("request", STATION), "ray"),
    ("status", ("job", STATION), "grpc"),
    ("cancel", ("job", STATION), "grpc"),
    ("watch", ("job", STATION, None, 1.0), "grpc"),
    ("result", ("job", STATION), "ray"),
    ("wait", ("job", 1.0, STATION), "grpc"),
    ("get_preview", ("job", STATION), "ray"),
    ("station_jobs", (STATION, 5), "grpc"),
    ("queue_stats", (), "grpc"),
    ("health", (), "grpc"),
    ("load_model", ("qwen-4step",), "grpc"),
]
WORKER_CALLS = [
    ("heartbeat", ("w", ["job"]), "grpc"),
    ("worker_state", ("w", "ready", "speck", None, {"node": "n"}), "grpc"),
    ("next_task", ("w", "speck", 5.0, False), "ray"),
    ("inputs", ("w", "job"), "ray"),
    ("progress", ("w", "step report"), "grpc"),
    ("preview", ("w", "preview report"), "ray"),
    ("cancel_signal", ("w", "job", 30.0), "grpc"),
    ("job_done", ("w", "done"), "ray"),
    ("job_failed", ("w", "failed"), "grpc"),
    ("load_done", ("w", "loaded"), "grpc"),
]


@pytest.mark.parametrize("grpc", [True, False])
def test_each_call_reaches_its_method_on_its_transport(grpc):
    async def main():
        for client, calls in ((IngressQueue(FakeHandle(), grpc), INGRESS_CALLS),
                              (WorkerQueue(FakeHandle(), grpc), WORKER_CALLS)):
            assert client.transport == ("grpc" if grpc else "ray")
            for name, args, transport in calls:
                expected = (name, transport if grpc else "ray", args)
                assert await getattr(client, name)(*args) == expected
        assert await OperatorQueue(FakeHandle(True)).drain() == ("drain", "ray", ())

    asyncio.run(main())


def test_the_mirror_feed_resyncs_as_a_ray_call_and_takes_deltas_by_grpc():
    async def main():
        client = IngressQueue(FakeHandle(), grpc=True)
        assert await client.changes("epoch", 41, 30.0) == ("changes", "grpc", ("epoch", 41, 30.0))
        assert await client.changes(None, None, 30.0) == ("changes", "ray", (None, None, 30.0))

    asyncio.run(main())


def test_a_refusal_the_queue_answered_is_raised_as_itself():
    async def main():
        client = IngressQueue(FakeHandle(answers={"status": JobNotFound("job", 3600)}), grpc=True)
        with pytest.raises(JobNotFound):
            await client.status("job", STATION)
        # the worker's client hands answers back as they came (an outcome is never an ApiError)
        worker = WorkerQueue(FakeHandle(answers={"job_done": "not yours"}), grpc=True)
        assert await worker.job_done("w", "done") == "not yours"

    asyncio.run(main())


def test_an_ingress_call_gives_up_after_its_time_limit():
    async def never():
        await asyncio.sleep(60)

    async def main():
        client = IngressQueue(FakeHandle(answers={"health": never}), grpc=True)
        with pytest.raises(asyncio.TimeoutError):
            await client.health(within=0.05)

    asyncio.run(asyncio.wait_for(main(), 10))
