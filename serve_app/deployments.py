"""The typed app builder that ``serve run config/serve.yaml`` calls: the application graph.

    HTTP -> Ingress (N replicas) -> QueueActor (1 replica) <- ModelWorker (N replicas, pull)

The only module (with ``launcher``) that knows all three wings; each wing knows only ``contract``
(the messages, the queue's faces, the typed clients), the shared vocabulary and its own settings.
"""

from .config import AppArgs, build_settings
from .ingress.deployment import Ingress
from .queue.actor import QueueActor
from .worker.deployment import ModelWorker


def build_app(args: AppArgs | dict | None):
    """The Serve application from config/serve.yaml's ``args:`` (validated as ``AppArgs``; an
    unknown or invalid key stops ``serve run`` with a sentence naming it)."""
    settings = build_settings(args)
    queue = QueueActor.options(ray_actor_options=settings.queue.actor_options).bind(settings)
    scaling = settings.worker.autoscaling
    count = ({"num_replicas": settings.worker.num_replicas} if scaling is None else
             {"autoscaling_config": scaling.serve_config()})
    workers = ModelWorker.options(**count, health_check_period_s=settings.worker_health_check_seconds,
                                  graceful_shutdown_timeout_s=settings.worker_graceful_seconds,
                                  graceful_shutdown_wait_loop_s=1.0,
                                  ray_actor_options=settings.worker.actor_options).bind(queue, settings)
    return Ingress.options(num_replicas=settings.ingress.replicas,
                           ray_actor_options=settings.ingress.actor_options).bind(queue, workers, settings)
