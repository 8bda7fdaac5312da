"""A real Ray cluster on loopback with real Serve apps built from config/serve.yaml.

Apps (each its own queue, workers and state folder):
- ``main`` at ``/``: the file's args with test overrides (a known key, temp folders, and a ``slow``
  tiny preset that takes about a second so queue behaviour can be observed);
- ``frozen`` at ``/frozen``: workers pinned to a Ray resource no node has, so jobs stay queued
  forever: exact admission counts with no job finishing in between;
- ``ttl`` at ``/ttl``: finished jobs expire after 2 seconds;
- ``stations`` at ``/st``: three stations' keys from a keys file (A, B, and the admin ``ops``), fair
  scheduling, at most 3 jobs per station, webhooks allowed to 127.0.0.1.
Every Ray step has a deadline; teardown is ``ray.shutdown()``.
"""

import hashlib
import os
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import KEY, LONG, ROOT, SLOW, SPECK, config_args, free_port, merged, remove_app, wait_http

ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
       "HF_HUB_OFFLINE": "1",
       # An object reference pickled outside Ray's serializer (sent by gRPC: serve_app/contract/queue_client.py)
       # would pin its object for good; here it raises instead, so every test catches a misrouted call.
       "RAY_allow_out_of_band_object_ref_serialization": "0"}
STATION_KEYS = {"A": "station-a-key-" + "a" * 20, "B": "station-b-key-" + "b" * 20, "ops": "operators-key-" + "o" * 20}


class Api:
    """An httpx client for one app, with the key set."""

    def __init__(self, base_url: str, state: Path, key: str = KEY):
        self.base = base_url
        self.state = state
        self.key = key
        self.http = httpx.Client(base_url=base_url, headers={"X-API-Key": key}, timeout=60)

    def as_key(self, key: str) -> "Api":
        return Api(self.base, self.state, key)

    def submit(self, image: bytes, instruction="make the sky blue", **fields):
        data = {"instruction": instruction, **{k: str(v) for k, v in fields.items()}}
        return self.http.post("/api/v1/submit", files={"image": ("in.png", image, "image/png")}, data=data)

    def status(self, job_id):
        return self.http.get(f"/api/v1/status/{job_id}")

    def wait(self, job_id, timeout=60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.status(job_id).json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish in {timeout}s")

    def drain(self, timeout=90.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http.get("/api/v1/queue").json()["queue_size"] == 0:
                return
            time.sleep(0.2)
        raise AssertionError("queue did not drain")


class _Placeholder:
    def ready(self):
        return True


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    os.environ.update(ENV)
    # Replicas import the named fake engines of fault tests (tests/fakes.py) from the repository.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    import ray
    from ray import serve

    port, metrics_port = free_port(), free_port()
    # Fake GPUs so GPU configs can be placed and checked (one for the GPU config, two for the
    # two-replica app); a "parking" resource held by a placeholder actor: workers pinned to it exist
    # in principle but never start, so their app's queue only fills (exact admission counts).
    ray.init(address="local", num_cpus=2, num_gpus=3, resources={"parking": 1}, include_dashboard=False,
             log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")), _metrics_export_port=metrics_port)
    parked = ray.remote(num_cpus=0, resources={"parking": 1})(_Placeholder).remote()
    ray.get(parked.ready.remote(), timeout=60)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    root = tmp_path_factory.mktemp("apps")
    yield {"port": port, "root": root, "metrics_port": metrics_port}
    # No serve.shutdown() first: it stops every app's replicas gracefully, one deployment at a time
    # (about 30 s with this session's apps), and the cluster's processes all end with it anyway.
    ray.shutdown()


def _args(root: Path, name: str, config_file: str = "serve.yaml", **over) -> dict:
    state = root / name
    state.mkdir(parents=True, exist_ok=True)
    (state / "api_key").write_text(KEY + "\n")
    # No rate limit: tests poll fast with one key (test_rate_limits turns it on for its own app).
    base = {"state_dir": str(state), "models_dir": str(root / "models"), "rate_limit": None,
            "presets": {"slow": SLOW, "long": LONG, "speck": SPECK}}
    return merged(merged(config_args(config_file), base), over)


def _deploy(cluster, name: str, prefix: str, wait_workers: bool, config_file: str = "serve.yaml",
            logging_config: dict | None = None, **over) -> Api:
    from ray import serve

    from serve_app.deployments import build_app

    args = _args(cluster["root"], name, config_file, **over)
    app = build_app(args)
    deadline = time.monotonic() + 60  # an app of this name that a test removed may still be stopping
    while (gone := serve.status().applications.get(name)) is not None and gone.status == "DELETING":
        assert time.monotonic() < deadline, f"app {name} still deleting after 60 s"
        time.sleep(0.2)
    # Not waiting for RUNNING when the workers can never be placed (the frozen app).
    serve.run_many([serve.RunTarget(app, name=name, route_prefix=prefix, logging_config=logging_config)],
                   wait_for_applications_running=wait_workers)
    base = f"http://127.0.0.1:{cluster['port']}{'' if prefix == '/' else prefix}"
    wait_http(base + "/api/v1/health")
    api = Api(base, Path(args["state_dir"]))
    if wait_workers:
        deadline = time.monotonic() + 120
        while not api.http.get("/api/v1/health").json().get("model_loaded"):
            assert time.monotonic() < deadline, "model worker did not load in 120s"
            time.sleep(0.3)
    return api


def _make_loras(root: Path) -> dict[str, str]:
    """Tiny LoRAs in the Lightning key format for the tiny transformer (one for another model)."""
    from diffusers import QwenImageTransformer2DModel

    from serve_app.worker.tiny_model import ensure_tiny_model, random_lightning_lora

    transformer = QwenImageTransformer2DModel.from_pretrained(ensure_tiny_model(root / "models" / "tiny") / "transformer")
    return {
        "lora4": str(random_lightning_lora(transformer, root / "loras" / "tiny-lightning-4step.safetensors", seed=1)),
        "other": str(random_lightning_lora(transformer, root / "loras" / "tiny-other.safetensors", seed=3)),
        "alien": str(random_lightning_lora(transformer, root / "loras" / "alien.safetensors", seed=2,
                                         prefix="single_transformer_blocks")),
    }


@pytest.fixture(scope="session")
def deploy(cluster):
    """``deploy(name, prefix, wait_workers, config_file="serve.yaml", **args) -> Api``: another app on
    the session's cluster, built from the config file's args with ``args`` merged over them."""
    return lambda *a, **kw: _deploy(cluster, *a, **kw)


@pytest.fixture
def remove_after():
    """``remove_after(name)``: the test's own app is removed when the test ends, passed or failed."""
    names: list[str] = []
    yield names.append
    for name in names:
        remove_app(name)


@pytest.fixture(scope="session")
def api(cluster) -> Api:
    loras = _make_loras(cluster["root"])
    common = {"base": "builtin:tiny", "cfg_scale": 1.0, "resolution": 256, "nominal_seconds": 1.0}
    presets = {
        "lora4": {**common, "steps": 4, "scheduler": "lightning", "lora": {"path": loras["lora4"]}},
        "alien": {**common, "steps": 4, "lora": {"path": loras["alien"]}},
    }
    return _deploy(cluster, "main", "/", wait_workers=True, presets=presets)


@pytest.fixture(scope="session")
def frozen_app(cluster) -> Api:
    return _deploy(cluster, "frozen", "/frozen", wait_workers=False,
                   worker={"num_cpus": 0, "resources": {"parking": 1}})


@pytest.fixture
def frozen(frozen_app) -> Api:
    """The frozen app with an empty queue: its jobs never run, so those an earlier test left queued
    are cancelled first (tests run in any order, and in parallel sessions)."""
    for job in frozen_app.http.get("/api/v1/jobs", params={"limit": 100}).json()["jobs"]:
        if job["status"] == "queued":
            assert frozen_app.http.post(f"/api/v1/status/{job['job_id']}/cancel").status_code == 200
    assert frozen_app.http.get("/api/v1/queue").json()["queue_size"] == 0
    return frozen_app


@pytest.fixture(scope="module")
def nowhere_api(cluster) -> Api:
    """Workers that need a resource no node has: they can never be scheduled."""
    yield _deploy(cluster, "nowhere", "/nowhere", wait_workers=False,
                  worker={"num_cpus": 0, "resources": {"no-such-node": 1}})
    remove_app("nowhere")


@pytest.fixture(scope="session")
def multi_api(cluster) -> Api:
    """Two GPU workers (on the faked GPUs): two jobs at once; two quick presets with different LoRAs
    (``la``, ``lb``) to count preset switches."""
    loras = _make_loras(cluster["root"])
    quick = {**SPECK, "resolution": 128}
    presets = {"la": {**quick, "lora": {"path": loras["lora4"]}}, "lb": {**quick, "lora": {"path": loras["other"]}}}
    return _deploy(cluster, "multi", "/multi", wait_workers=True, presets=presets,
                   worker={"num_replicas": 2, "num_gpus": 1, "num_cpus": 0})


@pytest.fixture(scope="module")
def ttl_api(cluster) -> Api:
    yield _deploy(cluster, "ttl", "/ttl", wait_workers=True, cleanup_age_seconds=2)
    remove_app("ttl")


@pytest.fixture(scope="module")
def gpu_api(cluster) -> Api:
    """config/serve.gpu.yaml on the faked GPU (no CPU reservation, so it fits next to the others),
    with no default preset: stations must call load-model first, as with the earlier deployment."""
    yield _deploy(cluster, "gpu", "/gpu", wait_workers=False, config_file="serve.gpu.yaml",
                  worker={"num_cpus": 0}, default_preset=None)
    remove_app("gpu")


@pytest.fixture(scope="module")
def stations(cluster) -> dict[str, Api]:
    """Station name -> an Api with that station's key (B's is stored only as a hash); removed after
    its module (an idle app costs about 3 % of a core)."""
    keys = cluster["root"] / "stations-keys.yaml"
    keys.write_text(yaml.safe_dump({
        "A": STATION_KEYS["A"],
        "B": {"key_sha256": hashlib.sha256(STATION_KEYS["B"].encode()).hexdigest()},
        "ops": {"key": STATION_KEYS["ops"], "admin": True}}))
    api = _deploy(cluster, "stations", "/st", wait_workers=True, api_keys_file=str(keys), scheduling="fair",
                  max_jobs_per_station=3, worker={"num_cpus": 0},
                  webhooks={"allowed_hosts": ["127.0.0.1"], "retry_seconds": 20, "timeout_seconds": 2})
    yield {name: api.as_key(key) for name, key in STATION_KEYS.items()}
    remove_app("stations")
