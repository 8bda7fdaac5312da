"""What the queue promises about its state folder: the job database is trusted only when it is whole,
and nothing is deleted while it is in doubt. Plain Python (no Ray), unit-tested on temporary folders.

``open_checked`` opens the database the queue will serve from, after checking it:
- an identity file (``jobs.sqlite3.identity``, written beside the database when it is created) says
  the folder had a database; the database holds the same identity;
- the file is read-only checked first (SQLite's ``PRAGMA quick_check``, the schema version, the
  tables and columns this release expects), so a damaged file is never written to;
- a database that is missing, empty, unreadable, failing the check, of another state folder, or of
  a newer release, where there should be one (the identity file is there, or result files are), is
  **damage**: ``StateDamaged``, whose sentence says what was found and what to do. The queue then
  serves nothing in its place (``/health`` unhealthy, 503 with the sentence) and deletes nothing.

``fresh_start`` (``qwen-serve CONFIG --fresh-start``, with the server stopped) moves the database
and every result file (an empty database accounts for none) into a dated folder beside them; ``backup``
(``qwen-serve CONFIG --backup DIR``, while the server runs) copies the database with SQLite's online
backup API, its identity, and the result files its jobs name.
"""

import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .jobstore import ADDED_COLUMNS, COLUMNS, LATER_COLUMNS, SCHEMA_VERSION, JobStore, NewerSchema, StateLock
from .storage import RESULT_NAME, names_in

IDENTITY_SUFFIX = ".identity"
WHAT_TO_DO = ("The queue serves no jobs until this is fixed, and nothing in the state folder was deleted. "
              "Restore the database from a backup (docs/operations.md, \"The job database\"), or stop the "
              "server and run `qwen-serve CONFIG --fresh-start` to set it and the results aside and start empty.")


class StateDamaged(Exception):
    """The job database cannot be trusted. ``public``: the sentence for /health and 503 answers (the
    database named by its place in the state folder); ``str()``: the same with its path, for the log."""

    def __init__(self, path: Path, found: str):
        self.public = f"The job database (jobs.sqlite3 in the state folder) {found}. {WHAT_TO_DO}"
        super().__init__(f"The job database {path} {found}. {WHAT_TO_DO}")


def identity_file(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + IDENTITY_SUFFIX)


def _write_identity(path: Path, value: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_only_check(db_path: Path, identity: str | None = None, results: bool = True) -> str | None:
    """What is wrong with the file, read without writing to it; None when it can be opened. With
    ``identity`` (this folder's), a database holding another one is of another folder."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot be opened ({exc})"
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            return str(NewerSchema(version))
        problems = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            return f"fails SQLite's integrity check ({problems[0][:200]})"
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and identity is None and not results:
            return None  # created, then stopped before its schema: nothing was ever stored in it
        if not {"jobs", "inputs"} <= tables:
            return "is not a job database of this server (it has no jobs and inputs tables)"
        columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        # Columns the migrations add are allowed to be missing; any other is not this schema.
        migrated = set(ADDED_COLUMNS).union(*(cols for v, cols in LATER_COLUMNS.items() if v > version))
        missing = sorted(set(COLUMNS) - columns - migrated)
        if missing:
            return f"is not a job database of this server (its jobs table has no {missing[0]} column)"
        if identity is not None:
            held = None
            if "meta" in tables:
                row = db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
                held = row and row[0]
            if held != identity:
                return (f"belongs to another state folder (its identity {held or 'is absent'}; this folder's is "
                        f"{identity})")
    except sqlite3.DatabaseError as exc:
        return f"cannot be read ({exc})"
    finally:
        db.close()
    return None


def check(db_path: Path, results_dir: Path) -> None:
    """Raise ``StateDamaged`` when the database at ``db_path`` is not one to trust (see the module)."""
    marker = identity_file(db_path)
    if not db_path.exists():
        if marker.exists():
            raise StateDamaged(db_path, "is missing, but this state folder had one (its identity file is there)")
        results = names_in(results_dir)
        if results:
            raise StateDamaged(db_path, f"is missing, but the results folder holds {len(results)} result file(s) "
                                        "whose jobs it recorded")
        return
    if db_path.stat().st_size == 0:
        raise StateDamaged(db_path, "is empty (0 bytes): it was truncated or copied incompletely")
    problem = _read_only_check(db_path, marker.read_text().strip() if marker.exists() else None,
                               bool(names_in(results_dir)))
    if problem:
        raise StateDamaged(db_path, problem)


def open_checked(db_path: Path, results_dir: Path) -> tuple[JobStore, str | None]:
    """(the store to serve from, a note for the log or None), after ``check``. A new database gets
    an identity and its identity file; one of an earlier release (without an identity) is migrated
    and adopted. Raises ``StateDamaged``."""
    check(db_path, results_dir)
    marker = identity_file(db_path)
    new = not db_path.exists()
    try:
        store = JobStore(db_path)
    except (sqlite3.DatabaseError, NewerSchema) as exc:
        raise StateDamaged(db_path, f"cannot be read ({exc})") from None
    held = store.identity()
    if marker.exists():  # (``check`` compared it with the database's)
        return store, None
    if held is None:
        held = uuid.uuid4().hex
        store.set_identity(held)
    _write_identity(marker, held)
    return store, None if new else f"the job database's identity file was written ({marker.name})"


# --- the operator's steps ------------------------------------------------------------------------

@dataclass(frozen=True)
class Moved:
    folder: Path
    files: list[str]


def fresh_start(db_path: Path, results_dir: Path, now: float | None = None) -> Moved:
    """Move the database (with its WAL, shared-memory and identity files) and every result file (the
    empty database that follows accounts for none) into ``<state folder>/set-aside-<UTC time>/``;
    delete nothing. Run with the
    server stopped: refused (``RuntimeError``) while a queue holds the state folder."""
    lock = StateLock(db_path)
    if not lock.try_acquire():
        raise RuntimeError("the server is running on this state folder: stop it first")
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now or time.time()))
        folder = db_path.parent / f"set-aside-{stamp}"
        # Every result goes with it: the empty database that follows names none of them.
        moved = []
        for suffix in ("", "-wal", "-shm", IDENTITY_SUFFIX):
            path = db_path.with_name(db_path.name + suffix)
            if path.exists():
                folder.mkdir(exist_ok=True)
                shutil.move(str(path), folder / path.name)
                moved.append(path.name)
        results = names_in(results_dir)
        if results:
            (folder / "results").mkdir(parents=True, exist_ok=True)
        for name in results:
            shutil.move(str(results_dir / name), folder / "results" / name)
            moved.append(f"results/{name}")
        return Moved(folder, moved)
    finally:
        lock.release()


@dataclass(frozen=True)
class Backup:
    folder: Path
    jobs: int
    results: int
    results_gone: int  # named by a job, but expired (deleted) before it was copied


def backup(db_path: Path, results_dir: Path, target: Path) -> Backup:
    """A consistent copy of the state into ``target`` while the server runs: the database through
    SQLite's online backup API (a snapshot of one moment, whatever the queue writes meanwhile), its
    identity file, and each result file its jobs name, copied by name (``target/results``)."""
    check(db_path, results_dir)
    if not db_path.exists():
        raise FileNotFoundError(f"there is no job database at {db_path} yet")
    target.mkdir(parents=True, exist_ok=True)
    copy = target / db_path.name
    if copy.exists():
        raise FileExistsError(f"{copy} exists: back up into an empty folder")
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    dest = sqlite3.connect(str(copy))
    try:
        source.backup(dest)
        names = [r[0] for r in dest.execute("SELECT result_name FROM jobs WHERE result_name IS NOT NULL")]
        jobs = dest.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    finally:
        dest.close()
        source.close()
    marker = identity_file(db_path)
    if marker.exists():
        shutil.copy2(marker, target / marker.name)
    (target / "results").mkdir(exist_ok=True)
    copied = gone = 0
    for name in names:
        if not RESULT_NAME.match(name):
            continue
        try:
            shutil.copy2(results_dir / name, target / "results" / name)
            copied += 1
        except FileNotFoundError:
            gone += 1
    return Backup(target, jobs, copied, gone)
