"""The queue's handle as the ingress and the workers use it: each method on the transport it needs.

Serve sends a handle call either as a Ray actor call (by reference: arguments and answers go
through Ray's serializer and, when large, its object store) or, per call, over a gRPC connection
between the replicas (by value), which costs less per call. ``internal_calls: grpc`` (the default)
sends the small, frequent calls (status feeds, progress, cancel signals, heartbeats) by gRPC.
gRPC pickles with cloudpickle, which is wrong for two kinds of call, so those (``BY_REFERENCE``)
always go as Ray calls:

- a call that carries an ``ObjectRef`` (a job's decoded pixels, ``transfer``): pickled outside
  Ray's serializer, the reference is "out of band", and Ray then keeps the object until the ingress
  replica that made it exits: every large upload's pixels would stay in the object store;
- a call that carries image bytes (uploads, results, previews) or may answer with many jobs (the
  mirror's full resync): the object store moves them without gRPC's copies and its message size
  limit (4 MB by default, ``RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH``).

``internal_calls: ray`` sends every call as a Ray call.
"""

from typing import Any

BY_REFERENCE = frozenset({
    "submit",       # the upload's bytes and the pixels' reference
    "next_task",    # hands the worker the job: its bytes or the pixels' reference
    "inputs",       # the stored upload's bytes
    "job_done",     # the result's PNG
    "result",       # the result's PNG, to the ingress
    "preview",      # a preview's JPEG
    "get_preview",  # the same, to the ingress
})


class QueueClient:
    """``client.method.remote(*args)`` as on the handle, each method on its transport."""

    def __init__(self, handle: Any, grpc: bool):
        self.transport = "grpc" if grpc else "ray"
        self._by_reference = handle.options(_by_reference=True)
        self._default = handle.options(_by_reference=not grpc)

    def __getattr__(self, name: str):
        if name == "changes":
            return _Changes(self._default.changes, self._by_reference.changes)
        return getattr(self._by_reference if name in BY_REFERENCE else self._default, name)


class _Changes:
    """The mirror's feed: a delta (the jobs changed since the last answer, a few) by the default
    transport; a full resync (no ``since``: every job kept for the TTL) as a Ray call."""

    def __init__(self, delta, full):
        self._delta, self._full = delta, full

    def remote(self, epoch, since, *args):
        return (self._full if since is None else self._delta).remote(epoch, since, *args)
