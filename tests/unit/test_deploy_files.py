"""The deployment files that cannot run here: the container image (no Docker) and the KubeRay manifest
(no Kubernetes). What can be checked without them is: the image matches the pins, every copied path
exists, and it runs what docs/deployment.md says; the manifest is generated from config/serve.gpu.yaml
without drift, parses as Kubernetes objects, and has only fields KubeRay's RayService API has, each
in its place and of its type."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from serve_app.config import AppArgs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"


def pinned(package: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(rf'"{re.escape(package)}==([\d.]+)"', text).group(1)


# --- Dockerfile -----------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_the_image_is_rays_own_of_the_pinned_version():
    base = dict(dockerfile())["FROM"]
    assert base == f"rayproject/ray:{pinned('ray[serve]')}-py311-gpu"


def test_every_path_the_image_copies_exists_and_is_let_through_dockerignore():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [args.split()[:-1] for op, args in dockerfile() if op == "COPY"]
    sources = [s for args in copies for s in args if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is not let through .dockerignore"


def test_the_image_runs_the_command_the_docs_give():
    command = " ".join(json.loads(dict(dockerfile())["CMD"]))
    assert command == "qwen-serve config/serve.gpu.yaml"
    assert (ROOT / command.split()[1]).exists()
    docs = (ROOT / "docs" / "deployment.md").read_text()
    section = docs[docs.index("## Container image"):]
    assert f"The image runs `{command}`" in section[:section.index("\n## ", 3)]


# --- Kubernetes -------------------------------------------------------------------------------------

def documents() -> list[dict]:
    return list(yaml.safe_load_all((K8S / "rayservice.yaml").read_text()))


def schema_for(kind: str) -> dict:
    return json.loads((K8S / "rayservice.schema.json").read_text())["kinds"][kind]


def test_the_manifest_is_what_the_generator_writes_from_the_gpu_config():
    proc = subprocess.run([sys.executable, str(K8S / "make_rayservice.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_object_is_a_kubernetes_object_of_kuberays_api():
    docs = documents()
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "RayService"]
    for doc in docs:
        assert doc["apiVersion"] and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
        jsonschema.validate(doc, schema_for(doc["kind"]))


def test_the_serve_config_inside_is_a_valid_app_config_placed_for_the_cluster():
    service = documents()[1]
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == pinned("ray[serve]")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    args = AppArgs.model_validate(serve["applications"][0]["args"])
    assert args.queue_resources == {"qwen_head": 1}
    head, gpu = cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]
    assert float(head["resources"]["qwen_head"]) >= args.queue_resources["qwen_head"] + 1  # + an ingress
    assert set(args.worker.resources) == set(gpu["resources"]) and args.worker.num_gpus == 1
    scaling = args.worker.autoscaling  # the workers follow the queue; the GPU pods follow the workers
    assert cluster["enableInTreeAutoscaling"] is True
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (scaling.min_workers, scaling.max_workers) == (0, 4)
    assert gpu["replicas"] == 0 and scaling.downscale_to_zero_delay_seconds >= 300
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = head["template"]["spec"]["containers"][0]["volumeMounts"]
    assert [m["mountPath"] for m in mounts] == [args.state_dir]  # the state folder is the claim
    claims = [v["persistentVolumeClaim"]["claimName"] for v in head["template"]["spec"]["volumes"]]
    assert claims == [documents()[0]["metadata"]["name"]]


@pytest.mark.parametrize("path, key, wrong", [
    (["spec", "rayClusterConfig", "headGroupSpec"], "rayStartParams", "rayStartParam"),  # misspelt
    (["spec", "rayClusterConfig", "workerGroupSpecs", 0], "groupName", "name"),
    (["spec", "rayClusterConfig"], "rayVersion", "rayversion"),
    (["spec"], "rayClusterConfig", "rayCluster"),
])
def test_the_schema_refuses_a_misspelt_field(path, key, wrong):
    doc = copy.deepcopy(documents()[1])
    node = doc
    for step in path:
        node = node[step]
    node[wrong] = node.pop(key)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema_for("RayService"))


def test_the_schema_refuses_a_misplaced_field_and_a_wrong_type():
    doc = copy.deepcopy(documents()[1])
    cluster = doc["spec"]["rayClusterConfig"]
    cluster["headGroupSpec"]["groupName"] = "head"  # a worker group's field on the head group
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema_for("RayService"))
    doc = copy.deepcopy(documents()[1])
    doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "2"  # int32, not a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema_for("RayService"))


# --- Prometheus and Grafana -------------------------------------------------------------------------

def test_prometheus_scrapes_every_ray_node_from_rays_discovery_file():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    ray_job = next(job for job in config["scrape_configs"] if job["job_name"] == "ray")
    assert ray_job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_every_dashboard_panel_queries_the_chosen_prometheus():
    dashboard = json.loads((ROOT / "deploy" / "prometheus" / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 7
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "ray_qwen_" in target["expr"] and target["expr"].count("(") == target["expr"].count(")")
    # (that each charted metric exists is checked on a live scrape: tests/integration/test_tools.py)
