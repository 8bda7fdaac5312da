"""The workers' autoscaling policy (``serve_app.worker.scaling``), alone and inside Serve's own wrapper
(the bounds, delays and cold start Serve applies to a custom policy): no cluster."""

import time
from types import SimpleNamespace

import pytest

from serve_app.config import AutoscalingArgs
from serve_app.worker.scaling import BUSY, QUEUED, RUNNING, QueueDepthPolicy, desired_workers, latest


def test_every_running_job_keeps_its_worker_and_queued_jobs_ask_for_more():
    assert desired_workers(0, 0, 1) == 0
    assert desired_workers(0, 2, 1) == 2
    assert desired_workers(10, 0, 1) == 10
    assert desired_workers(3, 1, 2) == 2  # four jobs, two per worker
    assert desired_workers(5, 0, 2) == 3  # rounded up
    assert desired_workers(0.4, 0, 1) == 1  # a time-averaged figure: some work wants a worker


def test_the_queue_figure_is_the_largest_any_replica_reported():
    assert latest(None, QUEUED) is None
    assert latest({QUEUED: {}}, QUEUED) is None
    assert latest({QUEUED: {"r1": 2.0, "r2": 3.0}}, QUEUED) == 3.0


def ctx(metrics, current=1, target=1, lo=0, hi=4):
    return SimpleNamespace(aggregated_metrics=metrics, target_num_replicas=target, current_num_replicas=current,
                           capacity_adjusted_min_replicas=lo, capacity_adjusted_max_replicas=hi,
                           app_name="default", policy_state={})


def test_the_policy_holds_its_target_until_a_replica_reported_the_queue():
    policy = QueueDepthPolicy(jobs_per_worker=1)
    assert policy(ctx({}, target=2))[0] == 2
    assert policy(ctx({BUSY: {"r1": 1.0}}, target=2))[0] == 2
    assert policy(ctx({QUEUED: {"r1": 7.0}, RUNNING: {"r1": 1.0}}, hi=10))[0] == 8
    assert policy(ctx({QUEUED: {"r1": 7.0}, RUNNING: {"r1": 1.0}}, hi=4))[0] == 4  # within max_workers
    assert policy(ctx({QUEUED: {"r1": 0.0}, RUNNING: {"r1": 0.0}}, lo=1))[0] == 1  # and min_workers


def serve_context(config, metrics, current, target, state=None):
    """The context Serve's controller builds (its own class), for its wrapper around our policy."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingContext

    return AutoscalingContext(
        deployment_id=DeploymentID("ModelWorker", "default"), deployment_name="ModelWorker", app_name="default",
        current_num_replicas=current, target_num_replicas=target, running_replicas=[],
        total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics=metrics, raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas, capacity_adjusted_max_replicas=config.max_replicas,
        policy_state=state if state is not None else {}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=time.time(), config=config)


def wrapped(args: AutoscalingArgs):
    """Our policy as Serve's controller runs it: resolved from the YAML's import path and wrapped."""
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig

    config = AutoscalingConfig(**args.serve_config())
    return config, _apply_autoscaling_config(_resolve_policy_callable(config.policy))


def test_serve_runs_the_policy_from_the_yaml_within_its_bounds_and_delays():
    config, policy = wrapped(AutoscalingArgs(min_workers=1, max_workers=3, upscale_delay_seconds=0,
                                             downscale_delay_seconds=0))
    burst = {QUEUED: {"r1": 10.0}, RUNNING: {"r1": 1.0}}
    assert policy(serve_context(config, burst, current=1, target=1))[0] == 3  # capped at max_workers
    idle = {QUEUED: {"r1": 0.0}, RUNNING: {"r1": 0.0}}
    assert policy(serve_context(config, idle, current=3, target=3))[0] == 1  # back to min_workers


def test_fewer_workers_must_be_wanted_for_the_downscale_delay_before_one_goes():
    config, policy = wrapped(AutoscalingArgs(min_workers=0, max_workers=2, downscale_delay_seconds=3600,
                                             downscale_to_zero_delay_seconds=3600))
    idle = {QUEUED: {"r1": 0.0}, RUNNING: {"r1": 0.0}}
    decided, state = policy(serve_context(config, idle, current=1, target=1))
    assert decided == 1  # wanted 0, but not for an hour yet
    assert policy(serve_context(config, idle, current=1, target=1, state=state))[0] == 1


def test_from_zero_a_waiting_call_starts_a_worker_at_once():
    """The queue's ``wake`` is a request waiting at the handle: Serve's cold-start path answers it
    with a replica whatever the delays (a deployment at zero reports no queue figures)."""
    config, policy = wrapped(AutoscalingArgs(min_workers=0, max_workers=2, upscale_delay_seconds=3600))
    context = serve_context(config, {}, current=0, target=0)
    context._total_num_requests_value = 1.0
    assert policy(context)[0] == 1


@pytest.mark.parametrize("args, wrong", [
    ({"min_workers": 3, "max_workers": 2}, "min_workers (3) must not exceed max_workers (2)"),
    ({"max_workers": 0}, "max_workers"),
    ({"jobs_per_worker": 0}, "jobs_per_worker"),
    ({"workers": 2}, "workers"),
])
def test_wrong_autoscaling_settings_are_refused_by_name(args, wrong):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        AutoscalingArgs(**args)
    assert wrong in str(err.value)
