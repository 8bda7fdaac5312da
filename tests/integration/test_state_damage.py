"""Issue 24 through real Serve apps, each on its own state folder: a damaged job database is refused
with a sentence (health unhealthy, 503 on submit, status and load-model), nothing is deleted, and
the documented fresh start serves again; a backup taken while jobs run restores every job it held."""

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from serve_app.launcher import main as qwen_serve
from serve_app.queue.statefolder import identity_file
from tests.helpers import IMAGE, ROOT, remove_app, wait_for

pytestmark = pytest.mark.integration
RESULT = "tiny_20261202_101500_s1_0a1b2c3d.png"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(("-shm", "-wal", ".lock"))
            and p.name not in ("api_key", "webhook_secret") and "uploads" not in p.parts}


def _wait_state_lock_free(db: Path, timeout: float = 60) -> None:
    """The removed app's queue replica has exited (it held the state folder's lock)."""
    from serve_app.queue.jobstore import StateLock

    def free():
        lock = StateLock(db)
        if lock.try_acquire():
            lock.release()
            return True
        return False

    wait_for(free, timeout=timeout, every=0.5)


def _damage(state: Path, case: str) -> None:
    """A state folder that had a database and a result, then the damage of ``case``."""
    from serve_app.queue.statefolder import open_checked

    db, results = state / "jobs.sqlite3", state / "results"
    results.mkdir(parents=True, exist_ok=True)
    store, _ = open_checked(db, results)
    store.close()
    (results / RESULT).write_bytes(b"a station's result")
    if case == "empty":
        db.write_bytes(b"")
    elif case == "garbage":
        db.write_bytes(b"\x00garbage header, not SQLite" * 200)
    elif case == "another folder":
        other = state.parent / f"{state.name}-other"
        other_store, _ = open_checked(other / "jobs.sqlite3", other / "results")
        other_store.close()
        shutil.copy2(other / "jobs.sqlite3", db)
    elif case == "missing beside results":
        db.unlink()
        identity_file(db).unlink()
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)


SAYS = {"empty": "is empty (0 bytes)", "garbage": "file is not a database",
        "another folder": "belongs to another state folder",
        "missing beside results": "is missing, but the results folder holds 1 result file(s)"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(SAYS))
def test_a_damaged_database_is_refused_with_a_sentence_and_nothing_is_deleted(deploy, cluster, case):
    name = "damaged-" + case.replace(" ", "-")
    state = Path(cluster["root"]) / name
    _damage(state, case)
    before = _files(state)
    api = deploy(name, f"/{name}", wait_workers=False, worker={"num_cpus": 0})
    try:
        def unhealthy():
            r = api.http.get("/api/v1/health")
            return r.status_code == 503 and r.json()["status"] == "unhealthy" and r

        health = wait_for(unhealthy, timeout=60, every=0.3).json()
        sentence = health["warnings"][0]
        assert SAYS[case] in sentence and "nothing in the state folder was deleted" in sentence
        assert str(state) not in sentence  # a public route: the database named by its place, no path
        for r in (api.submit(IMAGE), api.status("11111111-aaaa-4000-8000-000000000001"),
                  api.http.post("/api/v1/load-model", params={"model": "tiny"}), api.http.get("/api/v1/queue")):
            assert (r.status_code, r.json()["detail"]) == (503, sentence)
        assert _files(state) == before  # nothing deleted, nothing rewritten
    finally:
        remove_app(name)
    if case != "empty":
        return
    # The documented fresh start (server stopped): everything moves aside, the next start serves.
    _wait_state_lock_free(state / "jobs.sqlite3")
    config = _config(state, name)
    assert qwen_serve([str(config), "--fresh-start"]) == 0
    aside = next(state.glob("set-aside-*"))
    assert (aside / "results" / RESULT).read_bytes() == b"a station's result"
    assert (aside / "jobs.sqlite3").read_bytes() == b""
    api = deploy(name, f"/{name}", wait_workers=True, worker={"num_cpus": 0})
    try:
        assert api.http.get("/api/v1/health").json()["status"] == "healthy"
        job = api.submit(IMAGE, seed=3).json()["job_id"]
        assert api.wait(job)["status"] == "completed"
    finally:
        remove_app(name)


def _config(state: Path, app: str) -> Path:
    """A copy of config/serve.yaml whose app uses ``state`` (what an operator's qwen-serve reads)."""
    config = yaml.safe_load((ROOT / "config" / "serve.yaml").read_text())
    config["applications"][0]["name"] = app
    config["applications"][0]["args"]["state_dir"] = str(state)
    path = state.parent / f"{app}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(420)
def test_a_backup_taken_while_jobs_run_restores_every_job_it_held(deploy, cluster, tmp_path):
    root = Path(cluster["root"])
    api = deploy("backed-up", "/backed-up", wait_workers=True, worker={"num_cpus": 0})
    try:
        done = [api.submit(IMAGE, seed=s).json()["job_id"] for s in (1, 2)]
        for job in done:
            assert api.wait(job)["status"] == "completed"
        pngs = {job: api.http.get(f"/api/v1/status/{job}/result").content for job in done}
        waiting = [api.submit(IMAGE, preset="slow", seed=s).json()["job_id"] for s in (3, 4, 5)]
        assert qwen_serve([str(_config(api.state, "backed-up")), "--backup", str(tmp_path / "backup")]) == 0
        later = api.submit(IMAGE, seed=9).json()["job_id"]  # after the backup: not in it
    finally:
        remove_app("backed-up")
    held = sqlite3.connect(tmp_path / "backup" / "backed-up" / "jobs.sqlite3")
    assert {r[0] for r in held.execute("SELECT id FROM jobs")} == {*done, *waiting}
    held.close()
    # Restored as docs/operations.md says: the backup's files into an empty state folder, then start.
    restored = root / "restored"
    (restored / "results").mkdir(parents=True)
    backup = tmp_path / "backup" / "backed-up"
    for name in ("jobs.sqlite3", "jobs.sqlite3.identity"):
        shutil.copy2(backup / name, restored / name)
    for result in (backup / "results").iterdir():
        shutil.copy2(result, restored / "results" / result.name)
    api = deploy("restored", "/restored", wait_workers=True, worker={"num_cpus": 0})
    try:
        for job in done:
            r = api.http.get(f"/api/v1/status/{job}/result")
            assert r.status_code == 200 and r.content == pngs[job]  # byte-identical
        finals = [api.wait(job, timeout=120)["status"] for job in waiting]
        assert finals == ["completed"] * 3  # queued (or running) at the backup: they run after the restore
        assert api.status(later).status_code == 404
    finally:
        remove_app("restored")


@pytest.mark.timeout(180)
def test_a_database_of_release_0_2_0_serves_every_job_it_held(deploy, cluster):
    """The upgrade fixture (written by the job store of release 0.2.0) under a real app."""
    state = Path(cluster["root"]) / "upgraded"
    state.mkdir(parents=True)
    shutil.copy2(ROOT / "tests" / "fixtures" / "jobs-release-0.2.0.sqlite3", state / "jobs.sqlite3")
    # Its jobs finished in 2025: a TTL of ten years keeps them (with the default hour they expire at once).
    api = deploy("upgraded", "/upgraded", wait_workers=False, cleanup_age_seconds=10 * 365 * 86400,
                 worker={"num_cpus": 0, "resources": {"parking": 1}})
    try:
        jobs = wait_for(lambda: (lambda r: r.status_code == 200 and r.json()["jobs"])(
            api.http.get("/api/v1/jobs", params={"limit": 100})), timeout=60, every=0.3)
        by_id = {j["job_id"][:8]: j for j in jobs}
        assert set(by_id) == {"11111111", "22222222", "33333333", "44444444", "55555555"}
        assert by_id["33333333"]["status"] == "completed"
        assert by_id["33333333"]["result_path"] == "qwen-4step_20251202_080007_s7_33333333.png"
        assert (by_id["44444444"]["status"], by_id["44444444"]["error"]) == ("failed", "CUDA out of memory")
        assert [by_id[k]["status"] for k in ("11111111", "22222222")] == ["queued", "queued"]
        assert by_id["22222222"]["priority"] == "high" and by_id["22222222"]["station"] == "B"
        assert identity_file(state / "jobs.sqlite3").is_file()  # adopted: this folder's database now
        assert api.http.get("/api/v1/health").status_code == 200
    finally:
        remove_app("upgraded")
