"""The durable job store and the queue's restore from it (no Ray; a temporary folder)."""

import sqlite3

from serve_app.contract.protocol import JobStatus
from serve_app.queue.core import JobQueue
from serve_app.queue.jobstore import JobStore


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


def make(store_path, clock=None):
    return JobQueue(10, 3600, {"fast": 1.0}, clock=clock or Clock())


def test_jobs_and_inputs_round_trip_in_order_with_big_seeds(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    q = make(tmp_path)
    for i in range(3):
        job = q.submit(f"j{i}", instruction=f"edit {i}", preset="fast", seed=2**64 - 1 - i, payload=[b"img%d" % i],
                       station="A", idempotency_key=f"k{i}", fingerprint="f", webhook_url=None, total_steps=4)
        store.save(job, job.payload)
    job = q.claim("w")
    store.update(job)
    q.complete("j0", "r.png", 1.5)
    store.update(q.get("j0"))
    loaded = JobStore(tmp_path / "jobs.sqlite3").load()  # a second connection: what a restart sees
    assert [j.id for j in loaded] == ["j0", "j1", "j2"]
    assert loaded[0].status is JobStatus.COMPLETED and loaded[0].payload is None and loaded[0].run_seconds == 1.5
    assert loaded[1].payload == [b"img1"] and loaded[1].seed == 2**64 - 2 and loaded[1].station == "A"
    assert sqlite3.connect(tmp_path / "jobs.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.delete(["j0"])
    assert [j.id for j in store.load()] == ["j1", "j2"]
    inputs = sqlite3.connect(tmp_path / "jobs.sqlite3").execute("SELECT COUNT(*) FROM inputs").fetchone()[0]
    assert inputs == 2


def test_restore_keeps_order_states_keys_and_puts_interrupted_jobs_first(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    q = make(tmp_path)
    for i in range(4):
        job = q.submit(f"j{i}", instruction="x", preset="fast", seed=i, payload=[b"x"], idempotency_key=f"k{i}",
                       fingerprint="f")
        store.save(job, job.payload)
    for _ in range(2):
        store.update(q.claim("w1"))
    q.complete("j0", "r.png")
    store.update(q.get("j0"))
    # the server dies here: j1 processing, j2 and j3 queued
    again = make(tmp_path)
    again.restore(JobStore(tmp_path / "jobs.sqlite3").load())
    assert again.get("j1").status is JobStatus.PROCESSING and again.get("j1").attempts == 1
    assert again.order() == ["j2", "j3"]
    assert again.find_idempotent("default", "k3", "f").id == "j3"
    requeued = again.requeue("j1")
    assert requeued.status is JobStatus.QUEUED and again.order() == ["j1", "j2", "j3"]
    assert again.claim("w2").id == "j1" and again.get("j1").attempts == 2
    assert again.stats()["completed_count"] == 1 and again.occupancy == 3


def _disk(folder) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("jobs.sqlite3"))


def test_compact_returns_the_files_to_their_empty_size(tmp_path):
    import os

    store = JobStore(tmp_path / "jobs.sqlite3")
    store.compact()
    empty = _disk(tmp_path)
    q = make(tmp_path)
    for i in range(10):
        job = q.submit(f"j{i}", instruction="x", preset="fast", seed=i, payload=[os.urandom(300_000)])
        store.save(job, job.payload)
    grown = _disk(tmp_path)
    assert grown > empty + 3_000_000
    store.delete([f"j{i}" for i in range(10)])
    assert _disk(tmp_path) >= grown - 4096  # deleting alone gives nothing back...
    store.compact()
    assert _disk(tmp_path) <= empty  # ...compacting does


def test_an_older_database_without_auto_vacuum_is_converted_and_keeps_its_jobs(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    from serve_app.queue.jobstore import SCHEMA

    old.executescript(SCHEMA)
    old.close()
    store = JobStore(path)
    q = make(tmp_path)
    job = q.submit("j0", instruction="x", preset="fast", seed=1, payload=[b"img"])
    store.save(job, job.payload)
    assert store.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert [j.id for j in JobStore(path).load()] == ["j0"]


def test_a_snapshot_writes_the_state_it_was_taken_in(tmp_path):
    """The queue snapshots a job on its event loop and commits on its I/O thread: a change made in
    between is not half-written by the earlier commit, and the later snapshot wins."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    q = make(tmp_path)
    job = q.submit("j0", instruction="edit", preset="fast", seed=1, payload=[b"img"], station="A",
                   idempotency_key=None, fingerprint=None, webhook_url=None, total_steps=4)
    store.save(job, job.payload)
    claimed = store.snapshot(q.claim("w"))
    q.complete("j0", "r.png", 1.0)  # changes the same object before the first commit ran
    done = store.snapshot(job)
    store.write(claimed)
    first = JobStore(tmp_path / "jobs.sqlite3").load()[0]
    assert first.status is JobStatus.PROCESSING and first.result_name is None and first.payload == [b"img"]
    store.write(done)
    last = JobStore(tmp_path / "jobs.sqlite3").load()[0]
    assert last.status is JobStatus.COMPLETED and last.result_name == "r.png" and last.payload is None


def test_one_queue_per_state_folder(tmp_path):
    """A second holder waits until the first lets go (or its process ends)."""
    from serve_app.queue.jobstore import StateLock

    first, second = StateLock(tmp_path / "jobs.sqlite3"), StateLock(tmp_path / "jobs.sqlite3")
    assert first.try_acquire() and first.try_acquire()  # holding it again is a no-op
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    assert oct((tmp_path / "jobs.sqlite3.lock").stat().st_mode & 0o777) == "0o600"


def test_a_database_of_an_older_version_gains_the_new_columns(tmp_path):
    """Opened by this version, a file without the added columns gets them; its jobs load."""
    import re
    import sqlite3

    from serve_app.queue.jobstore import ADDED_COLUMNS, SCHEMA, JobStore

    path = tmp_path / "jobs.sqlite3"
    old = SCHEMA
    for column, kind in ADDED_COLUMNS.items():
        old = re.sub(rf",\s*{column} {re.escape(kind)}", "", old)
    assert not any(column in old for column in ADDED_COLUMNS)
    db = sqlite3.connect(path)
    db.executescript(old)
    db.execute("INSERT INTO jobs (id, instruction, preset, seed, created_at, status, station) "
               "VALUES ('j1', 'x', 'tiny', '1', 1.0, 'queued', 'default')")
    db.commit()
    db.close()
    store = JobStore(path)
    [job] = store.load()
    assert job.id == "j1" and job.webhook_events is None
    assert (job.priority, job.passes) == ("normal", 0)  # jobs of the older version
    job.webhook_events = "started"
    store.update(job)
    assert JobStore(path).load()[0].webhook_events == "started"
