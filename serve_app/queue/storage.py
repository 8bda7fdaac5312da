"""Result files: PNGs named as the contract says, kept under one folder, never addressed by path.

Only names that match ``RESULT_NAME`` are ever read, written or deleted, so no caller-supplied
string can reach outside the results folder. Writes are atomic (temporary file, then rename).
"""

import errno
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

PARTIAL = ".partial-"  # a write in progress (left behind only by a crash)
RESULT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,40}_\d{8}_\d{6}_s\d{1,20}_[0-9a-f]{8}\.png$")


def result_name(preset: str, finished_at: float, seed: int, job_id: str) -> str:
    """``<preset>_<UTC yyyymmdd_hhmmss>_s<seed>_<8 hex of job id>.png``."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(finished_at))
    return f"{preset}_{stamp}_s{seed}_{job_id.replace('-', '')[:8]}.png"


def storage_reason(exc: OSError) -> str:
    """Why a result could not be written, in words an operator acts on (no paths)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk holding the results folder is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the results folder is not writable"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "the results folder is missing"
    return (exc.strerror or type(exc).__name__).lower()


def names_in(folder: Path) -> list[str]:
    """The result files in ``folder``, sorted (none when it does not exist: nothing is created)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if RESULT_NAME.match(p.name))


class ResultStore:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not RESULT_NAME.match(name):
            raise ValueError(f"not a result file name: {name[:100]!r}")
        return self.folder / name

    def write(self, name: str, data: bytes) -> None:
        path = self._path(name)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=PARTIAL)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # on disk before the job is recorded as completed
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def modified(self, name: str) -> float:
        """When the result file was written (its modification time), or +inf if it is gone."""
        try:
            return self._path(name).stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def remove_partials(self, older_than: float | None = None) -> None:
        """Delete half-written files a crash left behind: all of them (call when no write is in
        progress), or those last modified before ``older_than``."""
        for path in self.folder.glob(PARTIAL + "*"):
            try:
                if older_than is None or path.stat().st_mtime < older_than:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    def sweep(self, named: set[str], cutoff: float, all_partials: bool = False) -> list[str]:
        """Delete what is provably an orphan: result files not in ``named`` last written before
        ``cutoff`` (a younger one is kept: its job's record may be what is missing), and half-written
        files (all of them with ``all_partials``, when no write can be in progress; else those from
        before ``cutoff``). The result names deleted."""
        gone = [name for name in self.names() if name not in named and self.modified(name) < cutoff]
        for name in gone:
            self.delete(name)
        self.remove_partials(None if all_partials else cutoff)
        return gone

    def problem(self, min_free_bytes: int) -> str | None:
        """None when results can be stored; else a sentence for health: the folder missing or not
        writable, or less free space than ``min_free_bytes``."""
        if not self.folder.is_dir():
            return "The results folder is missing: results cannot be stored until it is back."
        if not os.access(self.folder, os.W_OK | os.X_OK):
            return "The results folder is not writable: results cannot be stored until that is fixed."
        free = shutil.disk_usage(self.folder).free
        if free < min_free_bytes:
            return (f"The disk holding the results folder has {free / 2**20:.1f} MB free, less than "
                    f"min_free_disk_mb ({min_free_bytes / 2**20:.10g}): jobs fail when their result cannot be "
                    "stored. Free some space.")
        return None

    def names(self) -> list[str]:
        return names_in(self.folder)
