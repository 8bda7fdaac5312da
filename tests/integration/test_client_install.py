"""The stations' client installs alone: ``pip install ./clients/python`` in a fresh virtual
environment brings httpx, httpx-sse, pydantic and tqdm and nothing of the server (no torch, no
Ray, no serve_app), and its ``qwen-edit`` edits an image through the live Serve app."""

import os
import subprocess
import sys

import pytest

from tests.helpers import KEY, ROOT, photo

pytestmark = pytest.mark.integration


def test_the_client_installs_alone_and_edits_through_the_live_app(api, tmp_path):
    venv = tmp_path / "station-venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(ROOT / "clients" / "python")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path).stdout.lower()
    names = {line.split("==")[0] for line in listed.split()}
    assert {"qwen-edit-client", "httpx", "httpx-sse", "pydantic", "tqdm"} <= names
    assert not names & {"torch", "ray", "diffusers", "transformers", "fastapi", "qwen-edit-serve"}, names
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u, qwen_edit_client; "
                            "print(u.find_spec('serve_app') is None, u.find_spec('torch') is None)"],
                           capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert probe.stdout.split() == ["True", "True"], probe.stderr

    (tmp_path / "in.png").write_bytes(photo(96, 64))
    run = subprocess.run([str(venv / "bin" / "qwen-edit"), "--url", api.base, "--key", KEY, "submit", "in.png",
                          "-i", "make the sky blue", "--preset", "tiny", "--seed", "5", "--priority", "low",
                          "--out", "out.png"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
