"""The HTTP wing: the ``Ingress`` deployment, its FastAPI app, and what the routes do (``service``),
with the replica's mirror of the queue. It reaches the queue only through ``contract``."""
