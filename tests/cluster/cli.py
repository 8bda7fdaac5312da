"""What the Ray CLI cluster tests share: running Ray's and Serve's commands on loopback, a cluster
config written from config/serve.cluster.yaml for this CPU machine, and waiting for the model."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.helpers import KEY, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def env(**extra: str) -> dict:
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def run(*command: str, timeout: float = 120, **extra: str) -> str:
    """Run a command to success (its stdout), with the loopback environment plus ``extra``."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env(**extra), cwd=ROOT)
    assert proc.returncode == 0, f"{' '.join(command)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def cluster_config(tmp: Path, http_port: int, **args) -> Path:
    """config/serve.cluster.yaml served on 127.0.0.1:``http_port`` with a CPU worker, the test key and
    a state folder in ``tmp``, ``args`` merged into the app's args."""
    config = yaml.safe_load((ROOT / "config" / "serve.cluster.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    app_args = config["applications"][0]["args"]
    state = tmp / "state"
    state.mkdir()
    (state / "api_key").write_text(KEY + "\n")
    app_args.update(state_dir=str(state), default_preset="tiny", **args)
    app_args["worker"].update(num_replicas=1, num_gpus=0, num_cpus=1, compile=False, warmup=False, profile="auto",
                              device="cpu")
    path = tmp / "serve.cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_loaded(http: httpx.Client, timeout: float = 240) -> None:
    """Until /health says a model is loaded (the app deployed and its worker placed)."""
    def loaded():
        try:
            return http.get("/api/v1/health").json().get("model_loaded")
        except (httpx.HTTPError, ValueError):
            return False

    wait_for(loaded, timeout=timeout, every=1.0)
