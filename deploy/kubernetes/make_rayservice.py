"""Write deploy/kubernetes/rayservice.yaml: a KubeRay RayService whose serveConfigV2 is generated from
config/serve.gpu.yaml, so the two never drift.

    python deploy/kubernetes/make_rayservice.py           # rewrite the manifest
    python deploy/kubernetes/make_rayservice.py --check   # exit 1 if the manifest is not what this writes

What changes from config/serve.gpu.yaml: the state folder is the head's PersistentVolumeClaim, the queue
and ingress need the head's `qwen_head` resource, each worker needs a GPU node's `qwen_gpu_node`, and the
workers autoscale (`worker.autoscaling`, 0 to GPU_PODS_MAX): KubeRay's in-tree autoscaler adds a GPU pod
when Serve asks for a worker that no node can hold and removes one idle for IDLE_NODE_SECONDS (one GPU
per pod). Edit the cluster's shape here (images, sizes, bounds), never in the generated file. Needs only
PyYAML.
"""

import argparse
import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("rayservice.yaml")
KUBERAY = "v1.7.0"  # the KubeRay release whose RayService API this targets (rayservice.schema.json)
RAY_VERSION = "2.60.0"  # as pinned in pyproject.toml (a test checks)
IMAGE = "qwen-image-edit:gpu"  # the Dockerfile's image, pushed to your registry
NAME = "qwen-image-edit"
GPU_PODS_MAX = 4  # the GPU worker group scales from 0 to this, as the workers do
IDLE_NODE_SECONDS = 120  # KubeRay's autoscaler removes a GPU pod idle this long (its worker gone)
# The workers: none while nothing waits for 10 minutes (a cold start costs a GPU node, the image's
# pull and the weights' load: minutes; set min_workers: 1 to keep one warm).
WORKER_SCALING = {"min_workers": 0, "max_workers": GPU_PODS_MAX, "jobs_per_worker": 1, "upscale_delay_seconds": 5,
                  "downscale_delay_seconds": 300, "downscale_to_zero_delay_seconds": 600,
                  "look_back_seconds": 20, "cold_start_seconds": 300}
STATE = "/home/ray/qwen-image-edit/state"  # the image's working folder + state (its VOLUME)
HF_CACHE = "/home/ray/.cache/huggingface"


def serve_config() -> dict:
    """config/serve.gpu.yaml's applications, placed for the cluster."""
    config = yaml.safe_load((ROOT / "config" / "serve.gpu.yaml").read_text())
    apps = copy.deepcopy(config["applications"])
    for app in apps:
        args = app["args"]
        args["state_dir"] = STATE
        args["queue_resources"] = {"qwen_head": 1}
        args["ingress_resources"] = {"qwen_head": 1}
        worker = args.setdefault("worker", {})
        worker.pop("num_replicas", None)
        worker["autoscaling"] = dict(WORKER_SCALING)
        worker["resources"] = {"qwen_gpu_node": 1}
    return {"proxy_location": config.get("proxy_location", "EveryNode"),
            "logging_config": config.get("logging_config", {}), "applications": apps}


def container(name: str, limits: dict, mounts: list[dict]) -> dict:
    return {"name": name, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
            "env": [{"name": "RAY_USAGE_STATS_ENABLED", "value": "0"}, {"name": "HF_HUB_OFFLINE", "value": "1"}],
            "resources": {"limits": limits, "requests": limits}, "volumeMounts": mounts}


def manifest() -> list[dict]:
    state_claim = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"{NAME}-state"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "50Gi"}}},
    }
    head = {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-gpus": "0"},
        "resources": {"qwen_head": "100"},  # only the head: the queue (re)starts only next to its state
        "template": {"spec": {
            "containers": [{**container("ray-head", {"cpu": "4", "memory": "16Gi"},
                                        [{"name": "state", "mountPath": STATE}]),
                            "ports": [{"containerPort": 6379, "name": "gcs"},
                                      {"containerPort": 8265, "name": "dashboard"},
                                      {"containerPort": 8000, "name": "serve"}]}],
            "volumes": [{"name": "state", "persistentVolumeClaim": {"claimName": f"{NAME}-state"}}],
        }},
    }
    gpu = {
        "groupName": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": GPU_PODS_MAX,
        "rayStartParams": {},
        "resources": {"qwen_gpu_node": "1"},
        "template": {"spec": {
            "containers": [container("ray-worker", {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
                                     [{"name": "weights", "mountPath": HF_CACHE, "readOnly": True}])],
            "volumes": [{"name": "weights",
                         "persistentVolumeClaim": {"claimName": f"{NAME}-weights", "readOnly": True}}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }},
    }
    service = {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": NAME},
        "spec": {
            # One state folder, one queue: never a second cluster beside this one (KubeRay's default
            # upgrade would start one with its own head and queue before switching traffic).
            "upgradeStrategy": {"type": "None"},
            "serveConfigV2": yaml.safe_dump(serve_config(), sort_keys=False),
            "rayClusterConfig": {"rayVersion": RAY_VERSION,
                                 # GPU pods follow the workers Serve asks for (worker.autoscaling).
                                 "enableInTreeAutoscaling": True,
                                 "autoscalerOptions": {"idleTimeoutSeconds": IDLE_NODE_SECONDS},
                                 "headGroupSpec": head, "workerGroupSpecs": [gpu]},
        },
    }
    return [state_claim, service]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as readable literal blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render() -> str:
    header = (f"# Generated by deploy/kubernetes/make_rayservice.py from config/serve.gpu.yaml: edit those, then\n"
              f"# run it again. KubeRay {KUBERAY} RayService; docs/deployment.md, \"Kubernetes (KubeRay)\".\n"
              f"# The weights claim ({NAME}-weights, ReadOnlyMany, a filled Hugging Face cache) is yours to make.\n")
    return header + yaml.dump_all(manifest(), Dumper=_Dumper, sort_keys=False, width=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the manifest differs from what this writes")
    text = render()
    if parser.parse_args().check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python deploy/kubernetes/make_rayservice.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
