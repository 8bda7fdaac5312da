"""Issue 5, load (the short CI version of ``bench/load.py``): 20 stations submitting and polling for
10 s, on loopback, against the real Serve app and against the same app under plain uvicorn without
Ray. Either way: no 5xx, every accepted job completed and downloaded, none run twice. The latency
figures and their ratio are printed, not asserted (two shared cores make them noisy); the 60 s
figures are in BENCHMARKS.md.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import KEY, ROOT, SPECK, free_port, wait_http

pytestmark = pytest.mark.integration
LOAD = [sys.executable, str(ROOT / "bench" / "load.py")]


def _load(url: str, out: Path) -> dict:
    run = subprocess.run([*LOAD, "run", "--url", url, "--key", KEY, "--stations", "20", "--seconds", "10",
                          "--preset", "speck", "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in result.items() if k != "requests"}))
    return result


def _check(result: dict) -> None:
    assert result["server_errors"] == 0, result
    assert result["errors"] == [], result
    assert result["jobs_lost"] == 0 and result["jobs_duplicated"] == 0, result
    assert result["jobs_completed"] == result["jobs_accepted"] == result["server_completed_delta"] >= 10, result
    assert result["status_requests"] >= 100, result
    assert set(result["requests"]) <= {"submit 200", "submit 429", "status 200", "result 200"}, result["requests"]


def test_twenty_stations_lose_nothing_through_serve_and_through_plain_uvicorn(api, cluster, tmp_path):
    api.drain()
    served = _load(api.base, tmp_path / "serve.json")
    _check(served)

    # The same app, queue and worker classes in one process under uvicorn (no Ray).
    config = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())
    args = config["applications"][0]["args"]
    state = tmp_path / "plain-state"
    state.mkdir()
    (state / "api_key").write_text(KEY + "\n")
    # one key for all 20 stations, and no rate limit: as the Serve app it is compared with
    args.update(state_dir=str(state), models_dir=str(cluster["root"] / "models"), presets={"speck": SPECK},
                rate_limit=None)
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    with open(tmp_path / "plain.log", "wb") as log:
        server = subprocess.Popen([*LOAD, "plain", str(tmp_path / "plain.yaml"), "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/api/v1/health", timeout=120)
        import time

        import httpx

        deadline = time.monotonic() + 120
        while not httpx.get(base + "/api/v1/health", timeout=5).json()["model_loaded"]:
            assert time.monotonic() < deadline, (tmp_path / "plain.log").read_text()[-3000:]
            time.sleep(0.3)
        plain = _load(base, tmp_path / "plain.json")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    _check(plain)
    print("ray/plain status p50:", round(served["status_p50_ms"] / plain["status_p50_ms"], 2),
          "p99:", round(served["status_p99_ms"] / plain["status_p99_ms"], 2))
