"""Smoke test of the real CLI path, as an operator runs it: ``serve run config/serve.yaml``.

Starts the server in a fresh state folder, waits for health (model loaded) within a deadline, runs
one job to completion, downloads its PNG, sends SIGTERM, and checks that no Ray process is left.
Loopback only; every step has a deadline. Exit status 0 on success; prints a pytest-style summary.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1:8000"
RAY_PROCS = ("raylet", "gcs_server", "ray::", "dashboard.py", "log_monitor.py", "runtime_env/agent")


def ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in out if any(p in line for p in RAY_PROCS) and str(os.getpid()) not in line]


def wait_for(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, ValueError):  # not up yet, or the proxy's plain-text 404 before deploy
            pass
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def main() -> int:
    if ray_processes():
        print("smoke: Ray processes already running on this machine; refusing to start:\n" + "\n".join(ray_processes()))
        return 2
    work = Path(tempfile.mkdtemp(prefix="qwen-smoke-"))
    log_path = work / "serve.log"
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray"), "PYTHONUNBUFFERED": "1"}
    env.pop("QWEN_API_KEY", None)  # exercise the generated key
    serve_bin = Path(sys.executable).with_name("serve")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(serve_bin), "run", str(ROOT / "config" / "serve.yaml")], cwd=work,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ok = False
    try:
        t0 = time.monotonic()
        wait_for("health reports a loaded model",
                 lambda: httpx.get(f"{BASE}/api/v1/health", timeout=3).json().get("model_loaded"), 240)
        print(f"smoke: healthy after {time.monotonic() - t0:.1f}s")
        key_file = work / "state" / "api_key"
        key = key_file.read_text().strip()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600", "key file must be private"
        assert log_path.read_text(errors="replace").count(key) == 1, "the generated key is printed once"
        headers = {"X-API-Key": key}
        from PIL import Image
        import io

        buf = io.BytesIO()
        Image.new("RGB", (320, 240), (30, 120, 220)).save(buf, "JPEG")
        r = httpx.post(f"{BASE}/api/v1/submit", headers=headers, timeout=30,
                       files={"image": ("in.jpg", buf.getvalue(), "image/jpeg")},
                       data={"instruction": "make the sky blue", "seed": "42"})
        assert r.status_code == 200, r.text
        job_id = r.json()["job_id"]
        done = wait_for("job completed", lambda: (lambda s: s if s["status"] in ("completed", "failed") else None)(
            httpx.get(f"{BASE}/api/v1/status/{job_id}", headers=headers, timeout=5).json()), 120, 0.2)
        assert done["status"] == "completed", done
        png = httpx.get(f"{BASE}/api/v1/status/{job_id}/result", headers=headers, timeout=30)
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG"), png.status_code
        print(f"smoke: job {job_id[:8]} completed, {len(png.content)} byte PNG downloaded")
        ok = True
    finally:
        os.killpg(proc.pid, signal.SIGTERM) if proc.poll() is None else None
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            ok = False
            print("smoke: serve run ignored SIGTERM for 60s")
        try:
            wait_for("no Ray process left", lambda: not ray_processes(), 30)
        except TimeoutError as exc:
            ok = False
            print(f"smoke: {exc}:\n" + "\n".join(ray_processes()))
        if not ok:
            print("smoke: last lines of the server log:\n" + "\n".join(
                log_path.read_text(errors="replace").splitlines()[-40:]))
    print(f"smoke: {1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
