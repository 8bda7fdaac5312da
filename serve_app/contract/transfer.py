"""A job's decoded inputs, sent once from the ingress to the worker that runs the job.

The ingress decodes each upload when it checks it (``images.check_and_decode``). ``share`` puts
those pixels into Ray's object store once; the queue passes on only the reference, and the worker
reads the pixels from the store (zero-copy on the same node) instead of decoding the upload again.
The upload's bytes go to the queue as before, once: it stores them (the job survives a restart).
Pixels under ``INLINE_BYTES`` travel inside the calls instead, as Ray would send them anyway.

What holds: the reference is owned by the ingress replica that made it, so it is lost if that
replica ends before the job starts (a redeploy, a crash); ``fetch`` then raises and the worker asks
the queue for the stored bytes and decodes them. A job restored from the database has no pixels:
its worker decodes the bytes it is given. Outside Ray (``bench/load.py plain``) the pixels pass as
they are.
"""

from typing import Any

# Smaller values travel inside the calls (Ray inlines arguments under 100 KB itself, and a put of
# a small object costs more than sending it twice).
INLINE_BYTES = 100 * 1024


def share(value: Any, size: int) -> Any:
    """``value`` (``size`` bytes) in the object store (its reference); ``value`` itself when it is
    small or Ray is not running here."""
    if size < INLINE_BYTES:
        return value
    try:
        import ray
    except ImportError:  # (a plain server without Ray installed)
        return value
    return ray.put(value) if ray.is_initialized() else value


def is_reference(value: Any) -> bool:
    try:
        import ray
    except ImportError:
        return False
    return isinstance(value, ray.ObjectRef)


async def fetch(value: Any) -> Any:
    """What ``share`` was given; raises (Ray's ``OwnerDiedError``, ``ObjectLostError``) when the
    object is gone with its owner."""
    return await value if is_reference(value) else value
