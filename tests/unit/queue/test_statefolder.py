"""Issue 24: the job database is trusted only when it is whole. Each kind of damage is refused with
its sentence and leaves every file as it was; a database of the release before opens with all its
jobs; the sweep removes only provable orphans; a fresh start moves, never deletes; a backup taken
while jobs are written opens with every job it held."""

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from serve_app.contract.protocol import JobStatus
from serve_app.queue.job import Job
from serve_app.queue.jobstore import SCHEMA_VERSION, JobStore, StateLock
from serve_app.queue.statefolder import StateDamaged, backup, fresh_start, identity_file, open_checked
from serve_app.queue.storage import ResultStore

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "jobs-release-0.2.0.sqlite3"
RESULT = "tiny_20261202_101500_s1_0a1b2c3d.png"


def _state(tmp_path: Path, name="state"):
    state = tmp_path / name
    (state / "results").mkdir(parents=True)
    return state / "jobs.sqlite3", state / "results"


def _job(i: int) -> Job:
    return Job(f"job-{i}", f"edit {i}", "tiny", i, None, 1000.0 + i)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(db: Path, results: Path, says: str) -> StateDamaged:
    before = _files(db.parent)
    with pytest.raises(StateDamaged) as caught:
        open_checked(db, results)
    assert says in caught.value.public and says in str(caught.value)
    assert "nothing in the state folder was deleted" in caught.value.public
    assert "--fresh-start" in caught.value.public
    assert str(db.parent) not in caught.value.public and str(db) in str(caught.value)  # the log has the path
    after = _files(db.parent)
    # refused without changing or deleting a file (reading a WAL database may add SQLite's -shm/-wal,
    # and updates its -shm: the WAL's index, rebuilt from the WAL whenever needed)
    assert {k: after.get(k) for k in before if not k.endswith("-shm")} == {
        k: v for k, v in before.items() if not k.endswith("-shm")}
    assert all(k.endswith(("-shm", "-wal")) for k in set(after) - set(before)), set(after) - set(before)
    return caught.value


def test_a_new_folder_gets_a_database_with_an_identity_and_opens_again(tmp_path):
    db, results = _state(tmp_path)
    store, note = open_checked(db, results)
    store.save(_job(1), [b"img"])
    identity = store.identity()
    store.close()
    assert note is None and identity and identity_file(db).read_text().strip() == identity
    again, note = open_checked(db, results)
    assert note is None and [j.id for j in again.load()] == ["job-1"] and again.version == SCHEMA_VERSION


def test_an_empty_database_is_damage_never_a_new_queue(tmp_path):
    db, results = _state(tmp_path)
    open_checked(db, results)[0].close()
    (results / RESULT).write_bytes(b"png")
    db.write_bytes(b"")  # truncated by a full disk, a bad restore, a sync tool
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    _refused(db, results, "is empty (0 bytes)")


def test_a_garbage_header_is_damage_naming_what_sqlite_said(tmp_path):
    db, results = _state(tmp_path)
    db.write_bytes(b"this is not a database" * 100)
    _refused(db, results, "file is not a database")


def test_a_database_of_another_state_folder_is_damage(tmp_path):
    db_a, results_a = _state(tmp_path, "a")
    db_b, results_b = _state(tmp_path, "b")
    for db, results in ((db_a, results_a), (db_b, results_b)):
        store, _ = open_checked(db, results)
        store.save(_job(1), [b"img"])
        store.close()
    shutil.copy2(db_a, db_b)  # a restore from the wrong folder
    _refused(db_b, results_b, "belongs to another state folder")


@pytest.mark.parametrize("leftover", ["identity", "results"])
def test_a_missing_database_where_there_was_one_is_damage(tmp_path, leftover):
    db, results = _state(tmp_path)
    open_checked(db, results)[0].close()
    (results / RESULT).write_bytes(b"png")
    for extra in ("", "-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    if leftover == "results":
        identity_file(db).unlink()
        _refused(db, results, "the results folder holds 1 result file(s)")
    else:
        (results / RESULT).unlink()
        _refused(db, results, "its identity file is there")


def test_a_database_of_a_newer_release_is_refused_not_rewritten(tmp_path):
    db, results = _state(tmp_path)
    open_checked(db, results)[0].close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    _refused(db, results, "written by a newer release (schema version 99")


def test_a_corrupt_page_fails_the_integrity_check(tmp_path):
    db, results = _state(tmp_path)
    store, _ = open_checked(db, results)
    for i in range(200):
        store.save(_job(i), [os.urandom(2000)])
    store.compact()
    store.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page:6 * page] = os.urandom(3 * page)  # pages past the header, overwritten
    db.write_bytes(bytes(data))
    damage = _refused(db, results, "")
    assert "integrity check" in damage.public or "cannot be read" in damage.public or "malformed" in damage.public


def test_the_release_before_opens_with_every_job_its_state_and_inputs(tmp_path):
    """The fixture was written by the job store as released before issue 24 (schema version 0, no
    identity; tests/fixtures/make_release_0_2_0.py)."""
    db, results = _state(tmp_path)
    shutil.copy2(FIXTURE, db)
    store, note = open_checked(db, results)
    assert note and "identity file was written" in note  # adopted: this folder's database from now on
    assert store.version == SCHEMA_VERSION
    jobs = {j.id[:8]: j for j in store.load()}
    assert [j.id[:8] for j in store.load()] == ["11111111", "22222222", "33333333", "44444444", "55555555"]
    assert {k: j.status for k, j in jobs.items()} == {
        "11111111": JobStatus.QUEUED, "22222222": JobStatus.QUEUED, "33333333": JobStatus.COMPLETED,
        "44444444": JobStatus.FAILED, "55555555": JobStatus.PROCESSING}
    two = jobs["22222222"]
    assert (two.seed, two.system_prompt, two.priority, two.station, two.previews) == (
        2**64 - 1, "Retouch gently.", "high", "B", True)
    assert (two.webhook_url, two.webhook_events, two.idempotency_key) == ("http://127.0.0.1:9/hook",
                                                                          "started,completed", "k-2")
    assert two.payload == [b"\x89PNG-one", b"\x89PNG-two"] and jobs["11111111"].payload == [b"\x89PNG-queued"]
    assert jobs["33333333"].result_name == "qwen-4step_20251202_080007_s7_33333333.png"
    assert jobs["33333333"].payload is None and jobs["44444444"].error == "CUDA out of memory"
    assert (jobs["55555555"].worker_id, jobs["55555555"].step, jobs["55555555"].start_by) == ("worker-abc", 2,
                                                                                            1764662460.0)
    store.close()
    again, note = open_checked(db, results)  # and it opens again, as this folder's own
    assert note is None and len(again.load()) == 5


def test_the_sweep_removes_only_old_orphans_and_partials(tmp_path):
    store = ResultStore(tmp_path)
    now = time.time()
    names = {"young": "tiny_20261202_101500_s1_00000001.png", "old": "tiny_20261202_101500_s1_00000002.png",
             "named": "tiny_20261202_101500_s1_00000003.png"}
    for name in names.values():
        store.write(name, b"png")
    for key in ("old", "named"):
        os.utime(tmp_path / names[key], (now - 7200, now - 7200))
    young_partial = tmp_path / ".partial-young"
    old_partial = tmp_path / ".partial-old"
    young_partial.write_bytes(b"x")
    old_partial.write_bytes(b"x")
    os.utime(old_partial, (now - 7200, now - 7200))
    gone = store.sweep({names["named"]}, cutoff=now - 3600)
    assert gone == [names["old"]]  # an orphan older than the TTL
    assert sorted(store.names()) == sorted([names["young"], names["named"]])  # a young one may lack its record
    assert young_partial.exists() and not old_partial.exists()  # a write may be in progress
    store.sweep(set(), cutoff=now - 3600, all_partials=True)
    assert not young_partial.exists() and names["young"] in store.names()


def test_a_fresh_start_moves_everything_aside_and_refuses_while_the_server_runs(tmp_path):
    db, results = _state(tmp_path)
    store, _ = open_checked(db, results)
    store.save(_job(1), [b"img"])
    store.close()
    (results / RESULT).write_bytes(b"png")
    db.write_bytes(b"")  # damaged
    lock = StateLock(db)
    assert lock.try_acquire()  # as a running queue holds it
    with pytest.raises(RuntimeError, match="stop it first"):
        fresh_start(db, results)
    lock.release()
    moved = fresh_start(db, results, now=1764669600.0)
    assert moved.folder == db.parent / "set-aside-20251202-100000"
    assert {"jobs.sqlite3", "jobs.sqlite3.identity", f"results/{RESULT}"} <= set(moved.files)
    assert (moved.folder / "results" / RESULT).read_bytes() == b"png"
    assert not db.exists() and not list(results.iterdir())
    store, _ = open_checked(db, results)  # the next start: empty, a new identity
    assert store.load() == []


def test_a_backup_taken_while_jobs_are_written_restores_every_job_it_held(tmp_path):
    db, results = _state(tmp_path)
    store, _ = open_checked(db, results)
    for i in range(5):
        store.save(_job(i), [b"img%d" % i])
    done = store.load()[0]
    done.status, done.result_name, done.completed_at = JobStatus.COMPLETED, RESULT, 2000.0
    store.update(done)
    (results / RESULT).write_bytes(b"the result")
    taken = backup(db, results, tmp_path / "backup")
    store.save(_job(9), [b"later"])  # after the backup: not in it
    store.close()
    assert (taken.jobs, taken.results, taken.results_gone) == (5, 1, 0)
    # restore: the backup's files into a state folder (as docs/operations.md says), then start
    restored_db, restored_results = _state(tmp_path, "restored")
    shutil.copy2(tmp_path / "backup" / "jobs.sqlite3", restored_db)
    shutil.copy2(tmp_path / "backup" / "jobs.sqlite3.identity", identity_file(restored_db))
    shutil.copy2(tmp_path / "backup" / "results" / RESULT, restored_results / RESULT)
    again, note = open_checked(restored_db, restored_results)
    jobs = again.load()
    assert note is None and [j.id for j in jobs] == [f"job-{i}" for i in range(5)]
    assert jobs[0].result_name == RESULT and jobs[1].payload == [b"img1"]
    with pytest.raises(FileExistsError):
        backup(db, results, tmp_path / "backup")  # never over an earlier backup


def test_a_damaged_database_is_not_backed_up(tmp_path):
    db, results = _state(tmp_path)
    JobStore(db).close()
    db.write_bytes(b"")
    with pytest.raises(StateDamaged):
        backup(db, results, tmp_path / "backup")


def test_a_database_created_but_stopped_before_its_schema_is_new_not_damage(tmp_path):
    db, results = _state(tmp_path)
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA journal_mode=WAL")  # the file exists, with no table yet
    raw.close()
    store, _ = open_checked(db, results)
    assert store.load() == [] and store.identity()
    store.close()
    (results / RESULT).write_bytes(b"png")  # but beside results it was a database that held jobs
    db.unlink()
    identity_file(db).unlink()
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.close()
    _refused(db, results, "has no jobs and inputs tables")
