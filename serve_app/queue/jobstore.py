"""The queue's durable memory: job records and their input images in SQLite (WAL), in the state folder.

Contract with the queue actor:
- ``save(job, images)`` for a new job commits (fsync'd: ``synchronous=FULL``) before the station is
  answered, so an accepted job survives a crash of the queue, of the whole server, or of the machine;
- ``update(job)`` records every state change; inputs are deleted when a job finishes (the result is a
  file beside the database); ``delete(ids)`` removes expired jobs;
- ``load()`` returns every stored job in submission order, with its inputs while it still needs them;
- ``compact()`` gives freed pages back to the file system (incremental auto-vacuum, and the WAL
  truncated after a checkpoint), so the files shrink back to their empty size once every job expired.

One connection, used from one thread at a time (the queue's I/O thread; its event loop never waits
on a commit), so no locking is needed beyond SQLite's own. ``snapshot`` reads a job where it changes
(on the event loop) and ``write`` commits that snapshot elsewhere, so a commit never sees a job
half-way through a change. No Ray import: unit-tested on a temporary folder.
"""

import fcntl
import os
import sqlite3
from dataclasses import fields
from pathlib import Path

from ..contract.protocol import JobStatus
from .job import Job

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    instruction TEXT NOT NULL, preset TEXT NOT NULL, seed TEXT NOT NULL, system_prompt TEXT,
    created_at REAL NOT NULL, status TEXT NOT NULL, started_at REAL, completed_at REAL,
    result_name TEXT, error TEXT, worker_id TEXT, station TEXT NOT NULL, idempotency_key TEXT,
    fingerprint TEXT, webhook_url TEXT, step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER,
    step_seconds REAL, run_seconds REAL, attempts INTEGER NOT NULL DEFAULT 0, webhook_events TEXT,
    start_by REAL, finish_by REAL, priority TEXT NOT NULL DEFAULT 'normal', previews INTEGER NOT NULL DEFAULT 0,
    full_steps INTEGER
);
CREATE TABLE IF NOT EXISTS inputs (
    job_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# The schema's version, in SQLite's user_version. 0: as released up to 0.2.0 (no version kept);
# 1: every column below present; 2: the ``meta`` table, holding the state folder's identity;
# 3: ``jobs.full_steps`` (steps run in full, under a preset's step cache).
SCHEMA_VERSION = 3
# Columns added before versions were kept, with their types: added to an older file when it is opened.
ADDED_COLUMNS = {"webhook_events": "TEXT", "start_by": "REAL", "finish_by": "REAL",
                 "priority": "TEXT NOT NULL DEFAULT 'normal'", "previews": "INTEGER NOT NULL DEFAULT 0"}


# Columns added by the migrations after version 1.
LATER_COLUMNS = {3: {"full_steps": "INTEGER"}}


def _add_missing(db: sqlite3.Connection, columns: dict[str, str]) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    for column, kind in columns.items():
        if column not in have:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")


def _to_v1(db: sqlite3.Connection) -> None:
    _add_missing(db, ADDED_COLUMNS)


def _to_v2(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _to_v3(db: sqlite3.Connection) -> None:
    _add_missing(db, LATER_COLUMNS[3])


# Each schema change is a migration to the version after it, run in order on an older file (each in
# its own transaction with the version it reaches); a new file gets SCHEMA and the latest version.
MIGRATIONS = {1: _to_v1, 2: _to_v2, 3: _to_v3}
# Job fields kept in the jobs table. Not kept: the payload (it lives in ``inputs``), the latest
# preview's step (in memory with the preview) and the passes counted for the starvation bound (in
# memory: a restart counts them again from zero, as docs/operations.md says). Seeds up to 2**64-1 overflow
# SQLite's signed 64-bit integers, so they are stored as text.
COLUMNS = [f.name for f in fields(Job) if f.name not in ("payload", "pixels", "preview_step", "passes", "changed")]


class NewerSchema(Exception):
    """A database written by a newer release than this one (its schema version is higher)."""

    def __init__(self, version: int):
        super().__init__(f"it was written by a newer release (schema version {version}; this release reads up "
                         f"to {SCHEMA_VERSION})")
        self.version = version


class StateLock:
    """One queue per state folder: an exclusive lock on ``<jobs db>.lock``, held for as long as the
    process lives (the kernel releases it when the process ends, however it ends).

    A queue replica being replaced (a redeploy) keeps serving its last requests while its successor
    starts; the successor must not read the database before its predecessor's last write, or a job
    accepted in that moment would exist on disk but not in the queue. So the successor takes this lock
    before it reads anything. It is also what refuses a second app pointed at the same state folder."""

    def __init__(self, db_path: Path):
        self.path = Path(str(db_path) + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """True once this process holds the lock; False while another holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class JobStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new file only...
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            self.db.execute("VACUUM")  # ...an older file is rebuilt once to get it

    def _migrate(self) -> None:
        """A new file gets the schema at SCHEMA_VERSION; an older one each migration after its
        version, in order. A file of a newer release is refused (``NewerSchema``), never rewritten."""
        version = self.version
        if version > SCHEMA_VERSION:
            raise NewerSchema(version)
        fresh = not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone()
        if fresh:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                MIGRATIONS[target](self.db)
                self.db.execute(f"PRAGMA user_version = {target}")

    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def identity(self) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        return row[0] if row else None

    def set_identity(self, value: str) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('identity', ?)", (value,))

    def compact(self) -> None:
        """Shrink the database file and its WAL to what the remaining jobs need."""
        # executescript runs it to completion (a plain execute frees a single page)
        self.db.executescript("PRAGMA incremental_vacuum;")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.db.close()

    def _row(self, job: Job) -> list:
        values = []
        for name in COLUMNS:
            value = getattr(job, name)
            if name == "status":
                value = value.value
            elif name == "seed":
                value = str(value)
            values.append(value)
        return values

    def save(self, job: Job, images: list[bytes]) -> None:
        """A new job and its inputs, in one committed transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                            self._row(job))
            self.db.executemany("INSERT INTO inputs (job_id, idx, data) VALUES (?, ?, ?)",
                                [(job.id, i, data) for i, data in enumerate(images)])

    def snapshot(self, job: Job) -> tuple:
        """The job's state as it is now, for ``write`` (cheap: no I/O)."""
        return job.id, [v for c, v in zip(COLUMNS, self._row(job)) if c != "id"], job.status.terminal

    def write(self, snapshot: tuple) -> None:
        """Commit a ``snapshot``; a finished job's inputs are dropped in the same transaction."""
        job_id, values, terminal = snapshot
        cols = [c for c in COLUMNS if c != "id"]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"UPDATE jobs SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?", [*values, job_id])
            if terminal:
                self.db.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))

    def update(self, job: Job) -> None:
        """The job's current state (``write`` of a ``snapshot`` taken now)."""
        self.write(self.snapshot(job))

    def delete(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM inputs WHERE job_id = ?", [(i,) for i in job_ids])
            self.db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def load(self) -> list[Job]:
        """Every stored job in submission order; unfinished ones carry their inputs as ``payload``."""
        inputs: dict[str, list[bytes]] = {}
        for job_id, _, data in self.db.execute("SELECT job_id, idx, data FROM inputs ORDER BY job_id, idx"):
            inputs.setdefault(job_id, []).append(bytes(data))
        jobs = []
        for row in self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs ORDER BY seq"):
            values = dict(zip(COLUMNS, row))
            values["status"] = JobStatus(values["status"])
            values["seed"] = int(values["seed"])
            values["previews"] = bool(values["previews"])
            job = Job(**values)
            job.payload = inputs.get(job.id)
            jobs.append(job)
        return jobs

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
