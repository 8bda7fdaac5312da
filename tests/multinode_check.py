"""Two-node check, run by tests/integration/test_multinode.py in its own process.

Builds a Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``), pins the model
worker to the second node with a custom resource, runs one job through the head's HTTP proxy and
downloads the result there. Prints a JSON line with what it saw; exits non-zero on failure.
"""

import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import KEY, config_args, merged, photo  # noqa: E402


def main() -> int:
    from serve_app.deployments import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = Path(tempfile.mkdtemp(prefix="multinode-"))
    (state / "api_key").write_text(KEY)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={"gpu-node": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        head = ray.get_runtime_context().get_node_id()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        args = merged(config_args(), {"state_dir": str(state), "worker": {"resources": {"gpu-node": 1}}})
        serve.run(build_app(args), name="mn", route_prefix="/")
        base, headers = f"http://127.0.0.1:{port}/api/v1", {"X-API-Key": KEY}
        deadline = time.monotonic() + 180
        while not (health := httpx.get(f"{base}/health", timeout=10).json())["model_loaded"]:
            assert time.monotonic() < deadline, health
            time.sleep(0.5)
        r = httpx.post(f"{base}/submit", headers=headers, files={"image": ("a.png", photo(), "image/png")},
                       data={"instruction": "make it blue", "seed": "3"}, timeout=60)
        assert r.status_code == 200, r.text
        job_id = r.json()["job_id"]
        while (status := httpx.get(f"{base}/status/{job_id}", headers=headers, timeout=10).json())["status"] not in (
                "completed", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        result = httpx.get(f"{base}/status/{job_id}/result", headers=headers, timeout=30)
        worker_node = health["workers"][0]["node"]
        report = {"status": status["status"], "png": result.content[:4] == b"\x89PNG",
                  "worker_node": worker_node, "head_node": head[:12], "nodes": len(ray.nodes())}
        print(json.dumps(report))
        ok = report["status"] == "completed" and report["png"] and worker_node != head[:12]
        return 0 if ok else 1
    finally:  # (no serve.shutdown(): stopping each replica gracefully only delays the cluster's end)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
