"""Issue 5, fuzzing: Schemathesis against the service's own ``/openapi.json`` on a real Serve app.

The Schemathesis command line (as an operator would run it), every phase, with a valid key: no
server error, every status code documented for its route, every body, header and content type as
documented, invalid data refused, auth not ignored, 405 with ``Allow`` for other methods. One check
is left out, ``positive_data_acceptance``: an upload that fits the schema (any bytes declared
``format: binary``) is still not a picture, and is rightly refused with a 400.

The app (``fuzz`` at ``/fuzz``) is its own, so generated load-model calls and jobs cannot change
what other tests see; it is removed afterwards. Examples per route and pass are bounded
(``FUZZ_EXAMPLES``, default 25) and so is the time (``FUZZ_SECONDS``, default 60). Schemathesis fuzzes
in passes over every route until its time is up, then runs the stateful phase for the rest: in 60 s
here, 4,800 cases (every route in every phase, about 11 fuzzing passes and 350 stateful scenarios);
150 s gave 11,700 with the same checks and findings. Set FUZZ_SECONDS higher for a longer hunt.
(The pytest plugin's lazy ``from_fixture`` loader does not run under pytest 9, hence the CLI.)
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import KEY, remove_app

pytestmark = pytest.mark.integration
EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "25")
SECONDS = int(os.environ.get("FUZZ_SECONDS", "60"))


@pytest.mark.timeout(SECONDS + 180)
def test_every_route_keeps_its_documented_contract(deploy, tmp_path):
    # num_cpus 0: the session's other apps already reserve the cluster's two CPUs (bookkeeping only)
    api = deploy("fuzz", "/fuzz", wait_workers=True, worker={"num_cpus": 0})
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{api.base}/openapi.json",
               "--url", api.base, "-H", f"X-API-Key: {KEY}", "--checks", "all",
               "--exclude-checks", "positive_data_acceptance", "--max-examples", EXAMPLES,
               "--max-time", str(SECONDS), "--request-timeout", "30", "--workers", "2",
               "--suppress-health-check", "all", "--no-color", "--seed", "5"]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 120, cwd=tmp_path,
                             env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    finally:
        remove_app("fuzz")
    report = run.stdout[-12000:] + run.stderr[-3000:]
    print(report)
    assert run.returncode == 0, report
    assert "No issues found" in run.stdout or " passed" in run.stdout, report
