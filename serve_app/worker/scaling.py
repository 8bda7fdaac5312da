"""How many model workers the queue needs: the custom autoscaling policy Serve's controller runs for
the ``ModelWorker`` deployment when ``worker.autoscaling`` is set (``deployments.build_app``).

Why a policy of our own: Serve's default scales a deployment on the requests in flight to its
replicas, and workers here *pull* jobs with a long poll, so their requests say nothing about the
jobs waiting. Each worker replica reports the queue's own figures instead
(``ModelWorker.record_autoscaling_stats``: jobs queued, jobs running, itself busy or not); this
policy turns them into a replica count. The decision stays Serve's: its wrapper around a custom
policy applies ``min_replicas`` / ``max_replicas``, the up and down delays and
``downscale_to_zero_delay_s``, and starts the first replica from zero when a request waits for one
(the queue's ``wake`` call: a deployment at zero replicas reports no figures).

Plain Python: the controller imports this module by path, so it imports nothing heavy (no torch,
no Ray at import time).
"""

import math
from collections.abc import Mapping

QUEUED = "jobs_queued"  # the queue's queued jobs, as every worker reports it
RUNNING = "jobs_running"  # the queue's running jobs (claimed, not finished)
BUSY = "busy"  # 1 while this replica holds a job


def desired_workers(queued: float, running: float, jobs_per_worker: int) -> int:
    """Workers for this much work: every running job keeps its worker, and the queued jobs ask for
    one more worker per ``jobs_per_worker`` of them (rounded up). 0 when there is no work."""
    work = max(0.0, queued) + max(0.0, running)
    return math.ceil(work / max(1, jobs_per_worker) - 1e-9) if work > 0 else 0


def latest(metrics: Mapping | None, name: str) -> float | None:
    """The queue's figure ``name`` as the replicas report it: they all ask the same queue, so the
    largest of their (time-averaged) reports; None when no replica reported it yet."""
    per_replica = (metrics or {}).get(name) or {}
    values = [float(v) for v in per_replica.values() if v is not None]
    return max(values) if values else None


class QueueDepthPolicy:
    """``autoscaling_config.policy.policy_function`` for the model workers; ``policy_kwargs``:
    ``jobs_per_worker``. Called by Serve's controller with an ``AutoscalingContext`` every control
    loop; answers (replicas wanted, its state). Without figures yet (replicas starting) it holds the
    current target."""

    def __init__(self, jobs_per_worker: int = 1):
        self.jobs_per_worker = max(1, int(jobs_per_worker))
        self._gauge = None

    def __call__(self, ctx) -> tuple[int, dict]:
        metrics = ctx.aggregated_metrics
        queued, running = latest(metrics, QUEUED), latest(metrics, RUNNING)
        if queued is None or running is None:
            wanted = ctx.target_num_replicas
        else:
            wanted = desired_workers(queued, running, self.jobs_per_worker)
        # Within min and max workers (Serve bounds the decision again, with its target capacity).
        wanted = min(max(wanted, ctx.capacity_adjusted_min_replicas), ctx.capacity_adjusted_max_replicas)
        self._record(ctx, wanted)
        return wanted, ctx.policy_state

    def _record(self, ctx, wanted: int) -> None:
        """``ray_qwen_workers_desired{application}``: what the queue's figures ask for within the
        bounds, before Serve's delays (the dashboard shows it beside the running workers)."""
        try:
            if self._gauge is None:
                from ray.util.metrics import Gauge

                self._gauge = Gauge("qwen_workers_desired", description="Model workers the queue's figures ask "
                                    "for (within the bounds, before the delays).", tag_keys=("application",))
            self._gauge.set(wanted, tags={"application": ctx.app_name or ""})
        except Exception:  # a metric must never stop the autoscaler
            pass
