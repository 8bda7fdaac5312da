"""The queue's worker registry: liveness by heartbeats and leases on running jobs, with a fake clock."""

from serve_app.contract.protocol import HEARTBEAT_S, WorkerState, heartbeat_every
from serve_app.queue.workers import WORKER_SILENCE_S, WorkerRegistry


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_workers_are_alive_while_they_heartbeat_and_forgotten_when_silent():
    clock = Clock()
    reg = WorkerRegistry(lease_s=30, clock=clock)
    info, new = reg.seen("a")
    assert new and info.state == "starting"
    assert reg.seen("a")[1] is False
    reg.seen("b")[0].state = WorkerState.UNUSABLE
    assert [w.id for w in reg.alive()] == ["a", "b"] and [w.id for w in reg.usable()] == ["a"]
    clock.now += WORKER_SILENCE_S - 1
    reg.seen("b")
    clock.now += 2
    assert [w.id for w in reg.alive()] == ["b"]
    assert reg.forget_silent() == ["a"] and list(reg.workers) == ["b"]


def test_judging_waits_for_workers_to_announce_themselves_after_a_start():
    clock = Clock()
    reg = WorkerRegistry(lease_s=30, clock=clock)
    assert not reg.settled()
    clock.now += WORKER_SILENCE_S
    assert reg.settled()


def test_a_lease_runs_out_without_progress_and_holds_with_it():
    clock = Clock()
    reg = WorkerRegistry(lease_s=30, clock=clock)
    reg.grant("j1")
    reg.grant("j2")
    clock.now += 20
    reg.renew("j2")  # a step report, or a heartbeat naming it
    clock.now += 10  # j1: 30 s without progress
    assert reg.expired(["j1", "j2"]) == ["j1"]
    clock.now += 19.9
    assert reg.expired(["j1", "j2"]) == ["j1"]  # j2 was renewed 29.9 s ago
    clock.now += 0.1
    assert reg.expired(["j2"]) == ["j2"]  # and j1 (no longer running) is forgotten
    assert reg.expired([]) == []


def test_a_running_job_restored_after_a_restart_gets_a_full_lease():
    clock = Clock()
    reg = WorkerRegistry(lease_s=30, clock=clock)
    assert reg.expired(["restored"]) == []
    clock.now += 29
    assert reg.expired(["restored"]) == []
    clock.now += 1
    assert reg.expired(["restored"]) == ["restored"]


def test_under_a_short_lease_a_late_heartbeat_keeps_a_job_with_progress_leased():
    # A 3 s lease beside the default 2 s heartbeat left 1 s for a heartbeat to be late before a job
    # with progress lost its lease (seen in CI on a busy machine); the heartbeat follows the lease.
    assert heartbeat_every(300) == HEARTBEAT_S and heartbeat_every(3) == 1.0
    clock = Clock()
    reg = WorkerRegistry(lease_s=3, clock=clock)
    reg.grant("j")
    for _ in range(5):  # every heartbeat names the job, each 1.9 s late
        clock.now += heartbeat_every(3) + 1.9
        assert reg.expired(["j"]) == []
        reg.renew("j")
    clock.now += 3
    assert reg.expired(["j"]) == ["j"]  # silent for a whole lease: gone
