"""Workers that follow the queue (``worker.autoscaling``) on a three-node cluster of this machine with
faked GPUs: from zero to the maximum and back, a cold start the station is told about, and a worker
stopped while its job runs (``tests/autoscaling_check.py``, in its own process: a process holds one
Ray connection, and the session cluster holds ours)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


# About 3 minutes alone; beside the other test session a worker's start takes up to 4 times longer.
@pytest.mark.timeout(960)
def test_workers_follow_the_queue_from_zero_to_the_maximum_and_back_losing_no_job(tmp_path):
    log = tmp_path / "check.log"
    with open(log, "w") as out:
        try:
            proc = subprocess.run([sys.executable, str(ROOT / "tests" / "autoscaling_check.py")], cwd=ROOT,
                                  stdout=out, stderr=subprocess.STDOUT, text=True, timeout=900,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        except subprocess.TimeoutExpired:
            pytest.fail("the autoscaling check did not end in 900 s:\n" + log.read_text()[-6000:])
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines and lines[-1].get("ok"), text[-6000:]
    seen = lines[-1]
    assert seen["peak_workers"] == 2 and seen["stopped_while_running"], seen
    assert seen["health_while_starting"] in ("healthy", "starting"), seen
