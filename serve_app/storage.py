"""Result files: PNGs named as the contract says, kept under one folder, never addressed by path.

Only names that match ``RESULT_NAME`` are ever read, written or deleted, so no caller-supplied
string can reach outside the results folder. Writes are atomic (temporary file, then rename).
"""

import os
import re
import tempfile
import time
from pathlib import Path

PARTIAL = ".partial-"  # a write in progress (left behind only by a crash)
RESULT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,40}_\d{8}_\d{6}_s\d{1,20}_[0-9a-f]{8}\.png$")


def result_name(preset: str, finished_at: float, seed: int, job_id: str) -> str:
    """``<preset>_<UTC yyyymmdd_hhmmss>_s<seed>_<8 hex of job id>.png``."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(finished_at))
    return f"{preset}_{stamp}_s{seed}_{job_id.replace('-', '')[:8]}.png"


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

    def remove_partials(self) -> None:
        """Delete half-written files a crash left behind (call when no write is in progress)."""
        for path in self.folder.glob(PARTIAL + "*"):
            path.unlink(missing_ok=True)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir() if RESULT_NAME.match(p.name))
