"""config/serve.yaml's ``args:`` -> the deployments' ``Settings`` (``serve_app.config``)."""

import re

import pytest
from pydantic import ValidationError

from serve_app.config import IngressSettings, QueueSettings, Settings, WorkerSettings, build_settings


@pytest.mark.parametrize("args, says", [
    ({"worker": {"profile": "fp4"}}, "unknown profile 'fp4'"),
    ({"worker": {"gpu_memory_gib": 0}}, "gpu_memory_gib"),
    ({"presets": {"qwen-4step": {"profile": "auto"}}}, "auto is for worker.profile"),
    ({"presets": {"qwen-4step": {"profile": "int4"}}}, "unknown profile 'int4'"),
    ({"worker": {"prepare_ahead": "sometimes"}}, "worker.prepare_ahead"),
    ({"max_system_prompt_chars": 0}, "max_system_prompt_chars"),
    ({"job_lease_seconds": 0}, "job_lease_seconds"),
    ({"min_free_disk_mb": -1}, "min_free_disk_mb"),
    ({"worker": {"engine": "not an import path"}}, "worker.engine"),
    ({"max_upload_mb": 20, "max_body_mb": 10}, "max_body_mb (10.0) must be at least max_upload_mb"),
    ({"queue_size": 10}, "queue_size"),  # a misspelt key is refused, not ignored
    ({"presets": {"qwen-4step": {"step_cache": {"threshold": 2}}}}, "step_cache.threshold"),
    ({"presets": {"qwen-4step": {"step_cache": {"fn": 8}}}}, "step_cache.fn"),
    ({"presets": {"qwen-4step": {"transformer_gguf": {"repo": "Org/X"}}}}, "needs either `path`, or both"),
    ({"worker": {"num_replicas": 2, "autoscaling": {}}}, "set worker.num_replicas (a fixed number of workers) or "
                                                         "worker.autoscaling"),
    ({"worker": {"autoscaling": {"min_workers": 2, "max_workers": 1}}}, "min_workers (2) must not exceed"),
    ({"worker": {"autoscaling": {"max_replicas": 2}}}, "max_replicas"),  # Serve's name, not ours
])
def test_a_wrong_key_or_value_stops_the_build_naming_it(args, says, tmp_path):
    with pytest.raises(ValidationError, match=re.escape(says)):
        build_settings({"state_dir": str(tmp_path), **args})


def test_worker_settings_carry_the_profile_and_the_presets_to_plan_for(tmp_path):
    s = build_settings({"state_dir": str(tmp_path), "default_preset": "qwen-4step",
                        "worker": {"profile": "nf4", "gpu_memory_gib": 24},
                        "presets": {"qwen-40step": {"profile": "bf16-stream"}}})
    assert s.worker.profile == "nf4" and s.worker.gpu_memory_gib == 24 and s.max_images == 3
    # the presets sharing the default's base, minus the one with its own profile
    assert set(s.worker.plan_presets) == {"qwen-4step", "qwen-8step"}
    assert s.worker.preload is None  # the real weights are not on this machine


def test_worker_block_of_the_yaml_reaches_the_worker_settings(tmp_path):
    s = build_settings({"state_dir": str(tmp_path), "worker": {
        "attention_backend": "flash", "compile": True, "warmup": True, "torch_threads": 3,
        "png_compress_level": 6, "device": "cpu", "num_gpus": 1, "num_cpus": 2, "resources": {"edit": 1}}})
    w = s.worker
    assert (w.attention_backend, w.compile, w.warmup, w.torch_threads, w.png_compress_level, w.device) == (
        "flash", True, True, 3, 6, "cpu")
    assert w.preload == "tiny" and w.models_dir == str((tmp_path / "models").resolve())
    assert w.actor_options == {"num_gpus": 1, "num_cpus": 2, "resources": {"edit": 1}}
    assert s.worker_resources == {"CPU": 2, "GPU": 1, "edit": 1}


def test_queue_and_ingress_can_be_pinned_to_a_node(tmp_path):
    s = build_settings({"state_dir": str(tmp_path), "queue_resources": {"queue_node": 1}})
    assert s.queue.actor_options == {"num_cpus": 0, "resources": {"queue_node": 1}}
    assert s.ingress.actor_options == {"num_cpus": 0}  # anywhere, unless named


def test_every_path_is_absolute_under_the_state_folder_unless_named(tmp_path):
    s = build_settings({"state_dir": str(tmp_path), "results_dir": str(tmp_path / "elsewhere")})
    assert s.queue.results_dir == str(tmp_path / "elsewhere")
    assert s.queue.jobs_db == str(tmp_path / "jobs.sqlite3")
    assert s.ingress.upload_dir == str(tmp_path / "uploads")
    assert (tmp_path / "api_key").exists()  # made on first start


def test_each_setting_is_held_once():
    """A value two deployments read lives at the top of Settings, never copied into two parts."""
    parts = [QueueSettings, WorkerSettings, IngressSettings]
    top = set(Settings.model_fields) - {"queue", "worker", "ingress"}
    seen: dict[str, str] = {}
    for part in parts:
        for name in set(part.model_fields) - {"actor_options"}:  # (each deployment's own Ray options)
            assert name not in top, f"{part.__name__}.{name} copies Settings.{name}"
            assert name not in seen, f"{name} is in both {seen[name]} and {part.__name__}"
            seen[name] = part.__name__


@pytest.mark.parametrize("lease, period", [(300, 10.0), (3, 1.0), (15, 5.0)])
def test_a_hung_worker_is_checked_every_third_of_the_lease_within_serves_bounds(lease, period, tmp_path):
    """Serve replaces a replica after three failed health checks: about one lease after a job's ran out."""
    from serve_app.deployments import build_app

    settings = build_settings({"state_dir": str(tmp_path), "job_lease_seconds": lease})
    assert settings.worker_health_check_seconds == period
    app = build_app({"state_dir": str(tmp_path), "job_lease_seconds": lease})
    workers = app._bound_deployment.init_args[1]._bound_deployment  # (Serve has no public reader for it)
    assert workers.name == "ModelWorker" and workers._deployment_config.health_check_period_s == period


def test_the_gpu_config_adds_a_cached_40_step_preset_and_leaves_the_others_uncached():
    import yaml

    from serve_app.presets import build_registry
    from tests.helpers import ROOT

    args = yaml.safe_load((ROOT / "config" / "serve.gpu.yaml").read_text())["applications"][0]["args"]
    presets = build_registry(args["presets"])
    fast = presets["qwen-40step-fast"]
    assert fast.step_cache is not None and fast.step_cache.threshold == 0.12 and fast.step_cache.warmup_steps == 8
    assert (fast.steps, fast.cfg_scale, fast.negative_prompt) == (40, 4.0, presets["qwen-40step"].negative_prompt)
    assert all(presets[n].step_cache is None for n in ("qwen-4step", "qwen-8step", "qwen-40step"))


def test_autoscaling_workers_are_a_serve_autoscaling_config_with_the_queue_policy(tmp_path):
    """The YAML's worker.autoscaling becomes the ModelWorker deployment's autoscaling_config (Serve's
    own model accepts it); a stopping worker gets the graceful stop's time and a margin."""
    from ray.serve.config import AutoscalingConfig

    from serve_app.deployments import build_app

    s = build_settings({"state_dir": str(tmp_path), "graceful_stop_seconds": 20,
                        "worker": {"autoscaling": {"min_workers": 0, "max_workers": 3, "jobs_per_worker": 2,
                                                   "downscale_delay_seconds": 30, "look_back_seconds": 4}}})
    config = AutoscalingConfig(**s.worker.autoscaling.serve_config())
    assert (config.min_replicas, config.max_replicas, config.initial_replicas) == (0, 3, 0)
    assert config.downscale_delay_s == 30 and config.downscale_to_zero_delay_s is None
    assert config.look_back_period_s == 4 and config.metrics_interval_s == 2
    assert config.policy.policy_function == "serve_app.worker.scaling:QueueDepthPolicy"
    assert config.policy.policy_kwargs == {"jobs_per_worker": 2}
    assert s.worker_graceful_seconds == 30
    app = build_app({"state_dir": str(tmp_path), "worker": {"autoscaling": {"max_workers": 2}}})
    workers = app._bound_deployment.init_args[1]  # Ingress(queue, workers, settings)
    options = workers._bound_deployment._deployment_config
    assert options.autoscaling_config.max_replicas == 2 and options.graceful_shutdown_timeout_s == 40
    fixed = build_settings({"state_dir": str(tmp_path)})
    assert fixed.worker.autoscaling is None and fixed.worker.num_replicas == 1
