"""Which transport each queue method takes (``queue_client``): the calls that carry images or an
object reference, and the mirror's full resync, always go as Ray calls; the rest by gRPC when
``internal_calls: grpc``."""

from types import SimpleNamespace

from serve_app.contract.queue_client import BY_REFERENCE, QueueClient


class FakeHandle:
    """A DeploymentHandle's surface: ``options(_by_reference=...)``, then ``.method.remote(*args)``."""

    def __init__(self, by_reference: bool | None = None):
        self.by_reference = by_reference

    def options(self, _by_reference: bool):
        return FakeHandle(_by_reference)

    def __getattr__(self, name):
        return SimpleNamespace(remote=lambda *args: (name, "ray" if self.by_reference else "grpc", args))


def test_bulk_methods_go_as_ray_calls_and_the_rest_by_grpc():
    client = QueueClient(FakeHandle(), grpc=True)
    assert client.transport == "grpc"
    for name in ("submit", "next_task", "inputs", "job_done", "result", "preview", "get_preview"):
        assert getattr(client, name).remote("x") == (name, "ray", ("x",))
    for name in ("progress", "cancel_signal", "heartbeat", "admit", "cancel", "watch", "station_jobs", "health"):
        assert getattr(client, name).remote("x") == (name, "grpc", ("x",))


def test_the_mirror_feed_resyncs_as_a_ray_call_and_takes_deltas_by_grpc():
    client = QueueClient(FakeHandle(), grpc=True)
    assert client.changes.remote("epoch", 41, 30.0) == ("changes", "grpc", ("epoch", 41, 30.0))
    assert client.changes.remote(None, None, 30.0) == ("changes", "ray", (None, None, 30.0))


def test_internal_calls_ray_sends_everything_as_ray_calls():
    client = QueueClient(FakeHandle(), grpc=False)
    assert client.transport == "ray"
    assert client.progress.remote()[1] == client.changes.remote("e", 1, 1.0)[1] == client.submit.remote()[1] == "ray"


def test_every_by_reference_name_is_a_queue_method():
    from serve_app.queue.actor import QueueActor

    cls = getattr(QueueActor, "func_or_class", QueueActor)
    assert all(callable(getattr(cls, name, None)) for name in BY_REFERENCE | {"changes"})
