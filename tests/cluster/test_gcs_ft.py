"""GCS fault tolerance with Redis (Debian's redis-server): the GCS process dies and is started again
from Redis while a job runs and others wait; the app keeps serving from the replicas that stayed alive,
and no job is lost. Skipped where redis-server is not installed.

Its own pytest session (with tests/cluster/test_ray_cli.py): it starts and stops a Ray cluster with
Ray's CLI. Everything listens on loopback only.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.cluster.cli import BIN, cluster_config, env, run, wait_loaded
from tests.helpers import IMAGE, KEY, free_port, wait_for

LONG = {"base": "builtin:tiny", "steps": 120, "cfg_scale": 1.0, "resolution": 384, "nominal_seconds": 8.0}
PASSWORD = "gcs-ft-test"
RECONNECT_S = 10

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on this machine")


def gcs_server() -> psutil.Process:
    found = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.timeout(600)
def test_the_app_keeps_serving_through_a_gcs_restart_from_redis(tmp_path):
    redis_port, gcs_port, dashboard_port, http_port = (free_port() for _ in range(4))
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--requirepass", PASSWORD], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    temp = Path("/tmp") / f"ray-gcs-{os.getpid()}"
    try:
        run(str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
            "--num-cpus=2", "--num-gpus=0", '--resources={"qwen_head": 100, "qwen_gpu_node": 1}',
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}", f"--temp-dir={temp}", "--disable-usage-stats",
            f"--redis-password={PASSWORD}", RAY_REDIS_ADDRESS=f"127.0.0.1:{redis_port}",
            # raylets give up on a GCS that stays away this long (Ray's default: 60 s): the check below
            # waits past it, so a GCS that came back without the cluster's state would be caught
            RAY_gcs_rpc_server_reconnect_timeout_s=str(RECONNECT_S))
        path = cluster_config(tmp_path, http_port, presets={"long": LONG})
        run(str(BIN / "serve"), "deploy", str(path), "--address", f"http://127.0.0.1:{dashboard_port}")
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", headers={"X-API-Key": KEY}, timeout=30)
        wait_loaded(http)
        running = http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                            data={"instruction": "long", "seed": "1", "preset": "long"}).json()["job_id"]
        wait_for(lambda: http.get(f"/api/v1/status/{running}").json()["step"] >= 1, timeout=60)
        waiting = [http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                             data={"instruction": f"then {i}", "seed": str(i)}).json()["job_id"] for i in range(2)]

        # the GCS dies; it is started again, the same way, and reloads the cluster from Redis
        gcs = gcs_server()
        command, cwd, gcs_env = gcs.cmdline(), gcs.cwd(), gcs.environ()
        gcs.send_signal(signal.SIGKILL)
        gcs.wait(10)
        down_at = time.monotonic()
        served_while_down = http.get(f"/api/v1/status/{running}").status_code  # replicas stay alive
        restarted = subprocess.Popen(command, cwd=cwd, env=gcs_env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        jobs = [running, *waiting]
        wait_for(lambda: all(http.get(f"/api/v1/status/{j}").json()["status"] == "completed" for j in jobs),
                 timeout=180, every=1.0, show=lambda: [http.get(f"/api/v1/status/{j}").json() for j in jobs])
        assert served_while_down == 200
        views = [http.get(f"/api/v1/status/{j}").json() for j in jobs]
        assert [v["attempts"] for v in views] == [1, 1, 1]  # nothing ran twice: the worker lived on
        time.sleep(max(0.0, down_at + RECONNECT_S + 5 - time.monotonic()))
        assert "RUNNING" in run(str(BIN / "serve"), "status", "--address", f"http://127.0.0.1:{dashboard_port}")
        after = http.post("/api/v1/submit", files={"image": ("a.png", IMAGE, "image/png")},
                          data={"instruction": "after", "seed": "7"}).json()["job_id"]
        wait_for(lambda: http.get(f"/api/v1/status/{after}").json()["status"] == "completed", timeout=60)
        assert http.get("/api/v1/queue").json()["total_jobs"] == 4
        print(f"\ngcs: all jobs done, one more accepted and run {time.monotonic() - down_at:.1f}s after the GCS "
              "was killed")
        http.close()
        assert restarted.poll() is None  # the restarted GCS is the cluster's
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env(), capture_output=True, timeout=120)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(temp, ignore_errors=True)
