"""Smoke test of the real CLI path, as an operator runs it: ``serve run config/serve.yaml``.

Starts the server in a fresh state folder, waits for health (model loaded) within a deadline, runs
one job to completion, downloads its PNG, sends SIGTERM, and checks that no Ray process is left.
Then durability across restarts, on the same state folder: a second start still has the job and
serves the byte-identical PNG; five more jobs are submitted and the whole server (``serve run`` and
its Ray cluster) is killed with SIGKILL at once; a third start runs every one of them to completion,
none lost, none twice. Last, ``qwen-serve config/serve.yaml`` (what ``make serve`` runs) is started
on the same folder and sent SIGTERM while a job runs: that job completes within the grace period,
the jobs behind it stay queued in the state folder, and the server exits 0 with no Ray process left.
Then the state folder is backed up (``qwen-serve ... --backup``) and its database truncated to 0
bytes: the next start answers 503 "unhealthy" with the sentence and deletes no result; the backup,
restored as docs/operations.md says, starts with every job. Loopback only; every step has a deadline. Exit status 0 on success; prints a pytest-style summary.
"""

import os
import shutil
import signal
import sqlite3
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


def start(work: Path, log_path: Path, command: tuple[str, ...] = ("serve", "run")) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray"), "PYTHONUNBUFFERED": "1"}
    env.pop("QWEN_API_KEY", None)  # exercise the generated key
    program = Path(sys.executable).with_name(command[0])
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(program), *command[1:], str(ROOT / "config" / "serve.yaml")], cwd=work,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0 = time.monotonic()
    wait_for("health reports a loaded model",
             lambda: httpx.get(f"{BASE}/api/v1/health", timeout=3).json().get("model_loaded"), 240)
    print(f"smoke: healthy after {time.monotonic() - t0:.1f}s")
    return proc


def stop(proc: subprocess.Popen, sig: int) -> bool:
    """Signal the server's whole process group; True when it and every Ray process are gone."""
    ok = True
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        ok = False
        print("smoke: serve run ignored SIGTERM for 60s")
    if sig == signal.SIGKILL:  # Ray's own daemons may sit in other process groups: end them too
        for line in ray_processes():
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    try:
        wait_for("no Ray process left", lambda: not ray_processes(), 30)
    except TimeoutError as exc:
        ok = False
        print(f"smoke: {exc}:\n" + "\n".join(ray_processes()))
    return ok


def restarts(work: Path, log_path: Path, headers: dict, job_id: str, png: bytes) -> None:
    """Durability across a clean restart and across SIGKILL of the whole server."""
    proc = start(work, log_path)
    try:
        again = httpx.get(f"{BASE}/api/v1/status/{job_id}/result", headers=headers, timeout=30)
        assert again.status_code == 200 and again.content == png, "result not byte-identical after a restart"
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (200, 90, 40)).save(buf, "PNG")
        ids = []
        for seed in range(5):
            r = httpx.post(f"{BASE}/api/v1/submit", headers=headers, timeout=30,
                           files={"image": ("in.png", buf.getvalue(), "image/png")},
                           data={"instruction": "make it green", "seed": str(seed)})
            assert r.status_code == 200, r.text
            ids.append(r.json()["job_id"])
    finally:
        stop(proc, signal.SIGKILL)  # no grace: as a power cut would
    print("smoke: 5 jobs submitted, server killed with SIGKILL")
    proc = start(work, log_path)
    try:
        finals = [wait_for(f"job {i[:8]} finished after the crash", lambda i=i: (lambda s: s if s["status"] in (
            "completed", "failed") else None)(httpx.get(f"{BASE}/api/v1/status/{i}", headers=headers,
                                                        timeout=5).json()), 120, 0.2) for i in ids]
        assert [f["status"] for f in finals] == ["completed"] * 5, finals
        assert all(f["attempts"] in (1, 2) for f in finals), [f["attempts"] for f in finals]
        stats = httpx.get(f"{BASE}/api/v1/queue", headers=headers, timeout=5).json()
        assert stats["total_jobs"] == 6 and stats["completed_count"] == 6, stats  # none lost, none twice
        print("smoke: after SIGKILL and a restart, all 5 jobs completed; 6 jobs in all, none lost")
    finally:
        assert stop(proc, signal.SIGTERM), "the server did not stop cleanly"


def graceful_stop(work: Path, log_path: Path, headers: dict) -> None:
    """``qwen-serve``: SIGTERM (to it alone, as `kill` or a service manager sends it) while a job runs."""
    proc = start(work, log_path, ("qwen-serve",))
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (20, 160, 60)).save(buf, "PNG")
    ids = [httpx.post(f"{BASE}/api/v1/submit", headers=headers, timeout=30, data={"instruction": "x", "seed": str(s)},
                      files={"image": ("in.png", buf.getvalue(), "image/png")}).json()["job_id"] for s in range(4)]
    running = wait_for("a job processing", lambda: next((i for i in ids if httpx.get(
        f"{BASE}/api/v1/status/{i}", headers=headers, timeout=5).json()["status"] == "processing"), None), 60, 0.05)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("qwen-serve did not stop within 120 s of SIGTERM") from None
    print(f"smoke: qwen-serve stopped {time.monotonic() - t0:.1f}s after SIGTERM, exit status {code}")
    assert code == 0, code
    wait_for("no Ray process left", lambda: not ray_processes(), 30)
    from serve_app.queue.jobstore import JobStore

    store = JobStore(work / "state" / "jobs.sqlite3")
    states = {job.id: job for job in store.load()}
    store.close()
    assert states[running].status.value == "completed", states[running]  # finished within the grace
    assert states[running].attempts == 1
    left = [states[i].status.value for i in ids]
    assert "queued" in left and "processing" not in left, left  # the rest wait for the next start
    assert "running job(s) finished" in log_path.read_text(errors="replace")
    print(f"smoke: SIGTERM let the running job finish; jobs now {left}")


def damaged_database(work: Path, log_path: Path, headers: dict) -> None:
    """Issue 24, the operator's trial: a backup, then the database truncated to 0 bytes while the
    server is stopped. The next start refuses it with a sentence and deletes no result; the backup,
    restored, starts with every job."""
    state = work / "state"
    qwen_serve = Path(sys.executable).with_name("qwen-serve")
    config = str(ROOT / "config" / "serve.yaml")
    subprocess.run([str(qwen_serve), config, "--backup", str(work / "backup")], cwd=work, check=True, timeout=120)
    backup = work / "backup" / "qwen-image-edit"
    results = sorted(p.name for p in (state / "results").iterdir())
    assert results, "the earlier phases left results"
    (state / "jobs.sqlite3").write_bytes(b"")
    for extra in ("-wal", "-shm"):
        (state / f"jobs.sqlite3{extra}").unlink(missing_ok=True)
    proc = start(work, log_path)
    try:
        r = httpx.get(f"{BASE}/api/v1/health", timeout=10)
        assert r.status_code == 503 and r.json()["status"] == "unhealthy", r.text
        assert "is empty (0 bytes)" in r.json()["warnings"][0], r.text
        submit = httpx.post(f"{BASE}/api/v1/submit", headers=headers, timeout=30, data={"instruction": "x"},
                            files={"image": ("in.png", _png(), "image/png")})
        assert submit.status_code == 503 and "is empty (0 bytes)" in submit.json()["detail"], submit.text
        assert sorted(p.name for p in (state / "results").iterdir()) == results, "results were deleted"
        print(f"smoke: a 0-byte database is refused (503, unhealthy); all {len(results)} results kept")
    finally:
        assert stop(proc, signal.SIGTERM), "the server did not stop cleanly"
    for name in ("jobs.sqlite3", "jobs.sqlite3.identity"):  # the restore docs/operations.md gives
        shutil.copy2(backup / name, state / name)
    for result in (backup / "results").iterdir():
        shutil.copy2(result, state / "results" / result.name)
    held = sqlite3.connect(backup / "jobs.sqlite3").execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    proc = start(work, log_path)
    try:
        stats = httpx.get(f"{BASE}/api/v1/queue", headers=headers, timeout=10).json()
        assert stats["total_jobs"] == held, (stats, held)
        print(f"smoke: the backup restored: {held} jobs back")
    finally:
        assert stop(proc, signal.SIGTERM), "the server did not stop cleanly"


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


def main() -> int:
    if ray_processes():
        print("smoke: Ray processes already running on this machine; refusing to start:\n" + "\n".join(ray_processes()))
        return 2
    work = Path(tempfile.mkdtemp(prefix="qwen-smoke-"))
    log_path = work / "serve.log"
    proc = start(work, log_path)
    ok = False
    try:
        key_file = work / "state" / "api_key"
        key = key_file.read_text().strip()
        assert oct(key_file.stat().st_mode & 0o777) == "0o600", "key file must be private"
        assert log_path.read_text(errors="replace").count(key) == 1, "the generated key is printed once"
        headers = {"X-API-Key": key}
        import io

        from PIL import Image

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
        ok = stop(proc, signal.SIGTERM) and ok
    try:
        if ok:
            restarts(work, log_path, headers, job_id, png.content)
            graceful_stop(work, log_path, headers)
            damaged_database(work, log_path, headers)
    except Exception as exc:
        ok = False
        print(f"smoke: durability across restarts failed: {exc!r}")
    finally:
        if not ok:
            print("smoke: last lines of the server log:\n" + "\n".join(
                log_path.read_text(errors="replace").splitlines()[-40:]))
    print(f"smoke: {1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
