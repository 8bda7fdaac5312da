"""The service on a Ray cluster started with Ray's own CLI, as an operator runs it.

`ray start --head` (the queue's node, resource ``qwen_head``) plus a second node started with `ray start
--address=...` (its own raylet; the custom resource ``qwen_gpu_node`` stands in for a GPU), then
`serve deploy config/serve.cluster.yaml` with test overrides. Jobs flow end to end and results are
downloaded through the head; the worker node is then killed while a job runs: the job is queued again
(its worker went silent) and completes once a node with the resource joins again, with nothing lost
and no second result. Then `serve deploy` of a changed config while one job runs and two wait: all
three complete, in order, the running one at most once more. `ray stop` at the end leaves no Ray
process behind.

Runs in its own pytest session (``make test`` runs it after the main suite): `ray stop` stops every
Ray process on the machine, the main suite's cluster included. Everything listens on loopback only.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.cluster.cli import BIN, cluster_config, env, run, wait_loaded
from tests.helpers import IMAGE, KEY, free_port, wait_for

# Ray's CLI refuses to start a second node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, the setting
# that keeps every Ray port on loopback on this machine; and with it set to 1 it resolves 127.0.0.1
# to the machine's outward address. This runs Ray's own `ray start` entry point with that guard
# lifted and the node's address kept at 127.0.0.1: on a real cluster it is plain `ray start`.
RAY_START_ON_LOOPBACK = """
import sys
import ray._private.ray_constants as constants
import ray._private.services as services
constants.ENABLE_RAY_CLUSTER = True
services.get_node_ip_address = lambda address=None: "127.0.0.1"
from ray.scripts.scripts import main
sys.argv = ["ray", *sys.argv[1:]]
main()
"""
LONG = {"base": "builtin:tiny", "steps": 200, "cfg_scale": 1.0, "resolution": 384, "nominal_seconds": 15.0}
LEASE_S = 6


def ray_processes() -> set[int]:
    names = ("raylet", "gcs_server", "dashboard", "ray::")
    found = set()
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        text = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
        if any(n in text for n in names) and p.info["pid"] != os.getpid():
            found.add(p.info["pid"])
    return found


def raylets() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}


def start_worker_node(gcs: str) -> set[int]:
    """A second node on this machine; returns its raylet's pid (its agents and workers run under it)."""
    before = raylets()
    run(sys.executable, "-c", RAY_START_ON_LOOPBACK, "start", f"--address={gcs}", "--node-ip-address=127.0.0.1",
        "--num-cpus=1", "--num-gpus=0", '--resources={"qwen_gpu_node": 1}')
    return raylets() - before


def kill_node(pids: set[int]) -> None:
    """The node's machine is gone: its raylet, agents and every worker process under them, at once."""
    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture
def head(tmp_path):
    gcs_port, dashboard_port = free_port(), free_port()
    temp = Path("/tmp") / f"ray-cli-{os.getpid()}"  # (Ray's socket paths must stay short)
    run(str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
        "--num-cpus=1", "--num-gpus=0", '--resources={"qwen_head": 100}', "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp}", "--disable-usage-stats")
    try:
        yield {"gcs": f"127.0.0.1:{gcs_port}", "dashboard": f"http://127.0.0.1:{dashboard_port}", "tmp": tmp_path}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env(), capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", str(temp)])


@pytest.mark.timeout(900)
def test_serve_deploy_on_a_cli_cluster_survives_losing_the_worker_node(head):
    node = start_worker_node(head["gcs"])
    assert node, "the second node started no process"
    http_port = free_port()
    config = cluster_config(head["tmp"], http_port, job_lease_seconds=LEASE_S, presets={"long": LONG})
    run(str(BIN / "serve"), "deploy", str(config), "--address", head["dashboard"])
    base = f"http://127.0.0.1:{http_port}"
    http = httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=30)
    wait_loaded(http)
    status = run(str(BIN / "serve"), "status", "--address", head["dashboard"])
    assert "RUNNING" in status, status

    # where each deployment runs: the queue and ingress on the head, the worker on the second node
    workers = http.get("/api/v1/health").json()["workers"]
    assert len(workers) == 1

    # a job end to end, its result downloaded through the head
    first = http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                      data={"instruction": "make it blue", "seed": "1"}).json()["job_id"]
    wait_for(lambda: http.get(f"/api/v1/status/{first}").json()["status"] == "completed", timeout=60)
    png = http.get(f"/api/v1/status/{first}/result")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    # the worker node is lost while a long job runs
    job = http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                    data={"instruction": "a long one", "seed": "2", "preset": "long"}).json()["job_id"]
    wait_for(lambda: http.get(f"/api/v1/status/{job}").json()["step"] >= 2, timeout=120)
    kill_node(node)
    # its worker went silent: the job is queued again (one more attempt), nothing to run it yet
    wait_for(lambda: http.get(f"/api/v1/status/{job}").json()["status"] == "queued", timeout=LEASE_S + 60,
             show=lambda: http.get(f"/api/v1/status/{job}").json())
    assert http.get(f"/api/v1/status/{first}/result").content == png.content  # finished work stays

    # a node with the resource joins again: Serve places a worker there and the job completes
    start_worker_node(head["gcs"])
    wait_for(lambda: http.get(f"/api/v1/status/{job}").json()["status"] == "completed", timeout=300, every=1.0,
             show=lambda: http.get(f"/api/v1/status/{job}").json())
    view = http.get(f"/api/v1/status/{job}").json()
    assert view["attempts"] == 2 and view["error"] is None
    results = sorted(p.name for p in (head["tmp"] / "state" / "results").iterdir())
    assert len(results) == 2 and sum(job[:8] in name for name in results) == 1  # no duplicate result
    queue = http.get("/api/v1/queue").json()
    assert (queue["total_jobs"], queue["completed_count"], queue["failed_count"]) == (2, 2, 0)

    # `serve deploy` of a changed config while one job runs and two wait: none lost, order kept
    running = http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                        data={"instruction": "long again", "seed": "3", "preset": "long"}).json()["job_id"]
    wait_for(lambda: http.get(f"/api/v1/status/{running}").json()["step"] >= 1, timeout=120)
    waiting = [http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                         data={"instruction": f"then {i}", "seed": str(10 + i)}).json()["job_id"] for i in range(2)]
    changed = yaml.safe_load(config.read_text())
    changed["applications"][0]["args"]["presets"]["short"] = {**LONG, "steps": 2}
    config.write_text(yaml.safe_dump(changed))
    run(str(BIN / "serve"), "deploy", str(config), "--address", head["dashboard"])
    jobs = [running, *waiting]
    wait_for(lambda: all(http.get(f"/api/v1/status/{j}").json()["status"] == "completed" for j in jobs),
             timeout=300, every=1.0, show=lambda: [http.get(f"/api/v1/status/{j}").json() for j in jobs])
    wait_for(lambda: "short" in http.get("/api/v1/models").json()["models"], timeout=60)
    views = [http.get(f"/api/v1/status/{j}").json() for j in jobs]
    assert views[0]["attempts"] in (1, 2)
    assert views[1]["started_at"] <= views[2]["started_at"]
    assert http.get("/api/v1/queue").json()["total_jobs"] == 5
    http.close()

    # `ray stop` leaves nothing behind
    run(str(BIN / "ray"), "stop", "--force")
    time.sleep(1)
    assert not ray_processes()
