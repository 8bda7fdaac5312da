"""The queue wing: the singleton ``QueueActor`` deployment over plain-Python rules (``core``,
``workers``), the job database (``jobstore``, ``statefolder``) and the result files (``storage``).
It is reached only through ``contract``."""
