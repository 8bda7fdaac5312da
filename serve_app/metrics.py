"""Prometheus metrics, recorded through Ray (``ray.serve.metrics``).

Ray exports them on each node's metrics endpoint (``ray_`` prefixed, with Serve's ``application``,
``deployment`` and ``replica`` tags added), where Prometheus scrapes them and the Ray dashboard's
Metrics view reads them. Names:

- ``ray_qwen_queue_depth`` (queued jobs), ``ray_qwen_jobs_processing``: gauges, set on every change;
- ``ray_qwen_jobs_total{outcome}``: accepted, refused (429), completed, failed, cancelled;
- ``ray_qwen_job_wait_seconds{preset}``: submit to start; ``ray_qwen_job_processing_seconds{preset}``:
  the worker's time on a completed job; ``ray_qwen_step_seconds{preset}``: one denoising step;
  ``ray_qwen_model_load_seconds{preset}``: histograms;
- ``ray_qwen_gpu_memory_bytes{device}``: memory the worker holds for its model (GPU: what torch
  reserved; CPU workers: their resident memory);
- ``ray_qwen_workers_running`` (the queue's live workers) and ``ray_qwen_workers_desired`` (what the
  queue's figures ask Serve's autoscaler for, ``worker.autoscaling``; set by Serve's controller);
- ``ray_qwen_policy_refusals_total{check}``: prompts refused (``prompt``), uploads refused
  (``upload``) and results withheld (``output``) by the prompt and output policies.

Outside Ray (``bench/load.py``'s plain server) every recorder is a no-op.
"""

import os

WAIT_BUCKETS = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800]
RUN_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300]
STEP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5]
LOAD_BUCKETS = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900]


class _Noop:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _ray_metrics():
    import ray

    if not ray.is_initialized():
        return None
    from ray.serve import metrics

    return metrics


class QueueMetrics:
    """What the queue replica records."""

    def __init__(self):
        m = _ray_metrics()
        if m is None:
            self.depth = self.processing = self.jobs = self.wait = self.run = self.switches = _Noop()
            self.running_workers = _Noop()
            return
        self.running_workers = m.Gauge("qwen_workers_running", description="Model workers up (heartbeating), "
                                                                           "starting ones included.")
        self.depth = m.Gauge("qwen_queue_depth", description="Jobs waiting in the queue (queued).")
        self.processing = m.Gauge("qwen_jobs_processing", description="Jobs a model worker is running.")
        self.jobs = m.Counter("qwen_jobs", description="Jobs by outcome: accepted, refused (queue full), "
                                                       "completed, failed, cancelled.", tag_keys=("outcome",))
        self.wait = m.Histogram("qwen_job_wait_seconds", description="Seconds from submit to start.",
                                boundaries=WAIT_BUCKETS, tag_keys=("preset",))
        self.run = m.Histogram("qwen_job_processing_seconds",
                               description="Seconds a model worker spent on a completed job.",
                               boundaries=RUN_BUCKETS, tag_keys=("preset",))
        self.switches = m.Counter("qwen_preset_switches",
                                  description="Jobs handed to a worker that held another preset (it switches).",
                                  tag_keys=("preset",))

    def occupancy(self, queued: int, processing: int) -> None:
        self.depth.set(queued)
        self.processing.set(processing)

    def workers(self, alive: int) -> None:
        self.running_workers.set(alive)

    def outcome(self, name: str) -> None:
        self.jobs.inc(1, tags={"outcome": name})

    def started(self, preset: str, waited_s: float) -> None:
        self.wait.observe(max(0.0, waited_s), tags={"preset": preset})

    def switched(self, preset: str) -> None:
        self.switches.inc(1, tags={"preset": preset})

    def completed(self, preset: str, run_s: float | None) -> None:
        if run_s is not None:
            self.run.observe(run_s, tags={"preset": preset})


class PolicyMetrics:
    """Refusals by the prompt policy and the picture check (ingress and workers record them)."""

    def __init__(self):
        m = _ray_metrics()
        self.refusals = _Noop() if m is None else m.Counter(
            "qwen_policy_refusals", description="Prompts refused, uploads refused and results withheld by the "
                                                "server's policies.", tag_keys=("check",))

    def refused(self, check: str) -> None:
        self.refusals.inc(1, tags={"check": check})


class WorkerMetrics:
    """What each model worker replica records."""

    def __init__(self):
        m = _ray_metrics()
        if m is None:
            self.step = self.load = self.gpu_memory = _Noop()
            return
        self.step = m.Histogram("qwen_step_seconds", description="Seconds per denoising step.",
                                boundaries=STEP_BUCKETS, tag_keys=("preset",))
        self.load = m.Histogram("qwen_model_load_seconds", description="Seconds to load or switch to a preset.",
                                boundaries=LOAD_BUCKETS, tag_keys=("preset",))
        self.gpu_memory = m.Gauge("qwen_gpu_memory_bytes", description="Memory this worker holds for its model (GPU: torch reserved; CPU: resident).",
                                  tag_keys=("device",))

    def stepped(self, preset: str, seconds: float) -> None:
        self.step.observe(seconds, tags={"preset": preset})

    def loaded(self, preset: str, seconds: float | None) -> None:
        if seconds is not None:
            self.load.observe(seconds, tags={"preset": preset})

    def sample_memory(self, device: str) -> None:
        """The memory this worker holds for its model: what torch reserved on a GPU; on a CPU worker,
        its resident memory (the model lives there)."""
        if device.startswith("cuda"):
            import torch

            self.gpu_memory.set(torch.cuda.memory_reserved(), tags={"device": device})
            return
        try:  # Linux: resident pages of this process
            with open("/proc/self/statm") as f:
                resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return
        self.gpu_memory.set(resident, tags={"device": device})
