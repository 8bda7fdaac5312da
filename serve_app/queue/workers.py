"""The queue's view of its model workers: who is alive, what each is doing, and the leases on running
jobs. Plain Python with an injected clock (no Ray), unit-tested like ``core``.

Liveness: a worker heartbeats every ``HEARTBEAT_S``, busy or idle; silent for ``WORKER_SILENCE_S`` it
is gone (its replica died or was replaced).

Leases: a running job holds a lease of ``lease_s`` seconds, granted when its worker claims it and
renewed by evidence that the worker is still working on it: a step report, or a heartbeat that names
the job (a worker names a job only while its thread has made progress on it within the lease, or is
loading weights for it). A job whose lease ran out is one its worker, alive or not, has gone silent
about (a report lost, a pipeline hung): the queue runs it once more, then fails it. So no running
job holds a slot for longer than its lease after its last sign of progress.
"""

import time
from dataclasses import dataclass, field

from ..contract.protocol import HEARTBEAT_S, WorkerState

# A worker silent this long (several heartbeats) is gone.
WORKER_SILENCE_S = 5 * HEARTBEAT_S


@dataclass
class WorkerInfo:
    id: str
    state: WorkerState = WorkerState.STARTING
    preset: str | None = None
    last_seen: float = 0.0
    detail: str | None = None
    placement: dict = field(default_factory=dict)  # gpu_ids, node, device, profile: reported by the worker


class WorkerRegistry:
    def __init__(self, lease_s: float, clock=time.monotonic):
        self.lease_s = lease_s
        self.clock = clock
        self.started = clock()
        self.workers: dict[str, WorkerInfo] = {}
        self._leases: dict[str, float] = {}  # running job id -> when its lease runs out
        self._left: set[str] = set()  # workers that said they leave (scaled down, stopped): never back

    # --- liveness --------------------------------------------------------------------------------

    def leave(self, worker_id: str) -> None:
        """The worker's replica is stopping: forgotten now, and a late report of its (a heartbeat
        already on its way) does not bring it back."""
        self._left.add(worker_id)
        self.workers.pop(worker_id, None)

    def has_left(self, worker_id: str) -> bool:
        return worker_id in self._left

    def seen(self, worker_id: str) -> tuple[WorkerInfo, bool]:
        """The worker's record, marked alive now; and whether it is new. A worker that left gets a
        record that is not kept (its late report changes nothing)."""
        if worker_id in self._left:
            return WorkerInfo(worker_id, last_seen=self.clock()), False
        info = self.workers.get(worker_id)
        new = info is None
        if new:
            info = self.workers[worker_id] = WorkerInfo(worker_id)
        info.last_seen = self.clock()
        return info, new

    def alive(self) -> list[WorkerInfo]:
        now = self.clock()
        return [w for w in self.workers.values() if now - w.last_seen < WORKER_SILENCE_S]

    def usable(self) -> list[WorkerInfo]:
        return [w for w in self.alive() if w.state != WorkerState.UNUSABLE]

    def refusals(self) -> dict[str, str]:
        """Preset -> why, for the presets that workers refuse to run (a bad weights file, found when
        they started: ``placement["refused"]``), the first reason each."""
        found: dict[str, str] = {}
        for w in self.usable():
            for preset, why in (w.placement.get("refused") or {}).items():
                found.setdefault(preset, why)
        return found

    def refusal(self, preset: str) -> str | None:
        """Why ``preset`` cannot run anywhere: every usable worker (one at least) refuses it."""
        workers = self.usable()
        reasons = [(w.placement.get("refused") or {}).get(preset) for w in workers]
        return reasons[0] if reasons and all(reasons) else None

    def forget_silent(self) -> list[str]:
        """Drop the workers that stopped heartbeating; their ids."""
        alive = {w.id for w in self.alive()}
        gone = [wid for wid in self.workers if wid not in alive]
        for wid in gone:
            del self.workers[wid]
        return gone

    def settled(self) -> bool:
        """After a (re)start, workers announce themselves within a heartbeat: judge none before this."""
        return self.clock() - self.started >= WORKER_SILENCE_S

    # --- leases ----------------------------------------------------------------------------------

    def grant(self, job_id: str) -> None:
        """A lease for a job just claimed (or renewed: progress on it was seen)."""
        self._leases[job_id] = self.clock() + self.lease_s

    renew = grant

    def expired(self, running: list[str]) -> list[str]:
        """Of the ``running`` job ids, those whose lease ran out. A running job without a lease (one
        restored after a restart) gets one now; leases of jobs no longer running are dropped."""
        now = self.clock()
        self._leases = {job_id: self._leases.get(job_id, now + self.lease_s) for job_id in running}
        return [job_id for job_id, until in self._leases.items() if until <= now]
