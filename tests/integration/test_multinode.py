"""The model worker on a second node: jobs complete and results download through the head."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_worker_pinned_to_a_second_node():
    # Its own process: a process holds one Ray connection, and the session cluster holds ours.
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_check.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=420, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(lines[-1])
    assert report["status"] == "completed" and report["png"] and report["nodes"] == 2
    assert report["worker_node"] != report["head_node"]
