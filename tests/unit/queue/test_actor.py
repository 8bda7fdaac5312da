"""The queue replica's interface (``serve_app.queue.actor``), read without starting it."""


def test_every_queue_method_for_jobs_takes_the_caller_explicitly():
    """No method defaults the caller to the admin: a call that forgets it fails, never sees all jobs."""
    import inspect

    from serve_app.queue.actor import QueueActor

    cls = QueueActor.func_or_class
    for name in ("submit", "status", "cancel", "watch", "result", "wait", "station_jobs", "admit"):
        caller = inspect.signature(getattr(cls, name)).parameters["caller"]
        assert caller.default is inspect.Parameter.empty, name
