"""The ingress's mirror of the queue: the core's change feed, and the mirror that applies it.

The feed is the real ``JobQueue.changes`` (wrapped as the queue replica wraps it); the mirror's
clock is faked, so freshness is tested without sleeping.
"""

import asyncio

import pytest

from serve_app.auth import Caller
from serve_app.contract.protocol import Changes, JobStatus
from serve_app.errors import JobNotFound
from serve_app.ingress.mirror import Mirror
from serve_app.queue.core import JobQueue

A, B = Caller("a"), Caller("b")
ADMIN = Caller("ops", admin=True)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Feed:
    """The queue replica's ``changes`` over a real core, without the long poll."""

    def __init__(self, core: JobQueue, epoch: str = "e1"):
        self.core, self.epoch, self.calls, self.fail = core, epoch, 0, None

    def answer(self, epoch, since) -> Changes:
        d = self.core.changes(since if epoch == self.epoch else None)
        return Changes(self.epoch, d.version, d.full, d.views, d.removed, self.core.stats(), {"warnings": []})

    async def __call__(self, epoch, since, timeout):
        self.calls += 1
        if self.fail:
            raise self.fail
        await asyncio.sleep(0.001)
        return self.answer(epoch, since)


def core(clock=None, **kw) -> JobQueue:
    kw.setdefault("max_size", 10)
    return JobQueue(cleanup_age_s=60, nominal_seconds={"tiny": 2.0}, clock=clock or (lambda: 100.0), **kw)


def submit(q: JobQueue, job_id: str, station: str = "a"):
    return q.submit(job_id, instruction="x", preset="tiny", seed=1, station=station, total_steps=4)


def sync(m: Mirror, feed: Feed) -> None:
    m.apply(feed.answer(m.epoch, m.version))


def test_core_changes_delta_lists_open_jobs_and_only_newly_finished_ones():
    q = core()
    for n in range(3):
        submit(q, f"j{n}")
    first = q.changes(None)
    assert first.full and [v.job_id for v in first.views] == ["j0", "j1", "j2"]
    q.claim("w1")
    q.complete("j0", "r.png", 1.0)
    d = q.changes(first.version)
    assert not d.full and d.version > first.version
    assert [(v.job_id, v.status) for v in d.views] == [("j1", JobStatus.QUEUED), ("j2", JobStatus.QUEUED),
                                                       ("j0", JobStatus.COMPLETED)]
    assert [v.position for v in d.views[:2]] == [1, 2]
    again = q.changes(d.version)  # nothing new: the open jobs again, no finished one
    assert [v.job_id for v in again.views] == ["j1", "j2"] and again.removed == []
    assert all(v.version == q.version for v in again.views)


def test_core_changes_report_removals_and_resync_a_reader_too_far_behind(monkeypatch):
    now = [100.0]
    q = core(clock=lambda: now[0])
    submit(q, "j0")
    q.claim("w1")
    q.complete("j0", "r.png", 1.0)
    before = q.version
    now[0] += 61
    assert [j.id for j in q.expire()] == ["j0"]
    d = q.changes(before)
    assert d.removed == ["j0"] and d.views == []
    monkeypatch.setattr("serve_app.queue.feed.REMOVALS_KEPT", 0)
    submit(q, "j1")
    q.discard("j1")  # the removal log forgets at once: an old reader must resync whole
    assert q.changes(before).full
    assert q.changes(q.version + 5).full  # a version this queue never had (another replica's)


def test_every_change_a_reader_must_see_moves_the_version():
    q = core(max_size=1)
    seen = [q.version]

    def moved():
        assert q.version > seen[-1]
        seen.append(q.version)

    submit(q, "j0", "a"); moved()
    with pytest.raises(Exception):
        submit(q, "j1", "b")  # refused: the refused count changed
    moved()
    q.claim("w1"); moved()
    q.progress("j0", 1, 4, 0.5); moved()
    q.worker_slots = 2; moved()
    q.cancel("j0"); moved()
    q.touch(); moved()


def test_mirror_serves_views_and_keeps_stations_apart():
    q = core()
    submit(q, "ja", "a")
    submit(q, "jb", "b")
    m = Mirror(Feed(q), cleanup_age_s=60, clock=Clock())
    assert m.job("ja", A) is None  # nothing synced: ask the queue
    sync(m, Feed(q))
    assert m.job("ja", A).status is JobStatus.QUEUED and m.job("ja", A).position == 1
    with pytest.raises(JobNotFound):
        m.job("jb", A)  # another station's job: not found, as the queue answers
    assert m.job("jb", ADMIN).position == 2
    assert m.job("unknown", A) is None  # unknown here: the queue decides (another replica's new job)
    assert m.queue_stats()["queue_size"] == 2


def test_mirror_is_not_served_when_stale():
    q, clock = core(), Clock()
    submit(q, "ja")
    m = Mirror(Feed(q), cleanup_age_s=60, clock=clock, stale_s=3.0)
    sync(m, Feed(q))
    clock.now += 2.9
    assert m.job("ja", A) is not None and m.queue_health() is not None
    clock.now += 0.2
    assert m.job("ja", A) is None and m.queue_stats() is None and m.queue_health() is None


def test_an_older_feed_answer_never_replaces_a_newer_noted_view():
    q = core()
    feed = Feed(q)
    m = Mirror(feed, cleanup_age_s=60, clock=Clock())
    sync(m, feed)
    old = feed.answer(m.epoch, m.version)  # made before the writes below, applied after them
    submit(q, "ja")
    mine = q.view(q.get("ja"))
    m.note(mine)  # this replica's own submit
    assert m.queue_stats() is None  # stats wait for the mirror to reach the write
    m.apply(old)
    assert m.job("ja", A) == mine  # not dropped by the older answer that did not list it yet
    q.cancel("ja")
    m.note(q.view(q.get("ja")))
    m.apply(old)
    assert m.job("ja", A).status is JobStatus.CANCELLED
    sync(m, feed)
    assert m.job("ja", A).status is JobStatus.CANCELLED and m.queue_stats()["cancelled_count"] == 1


def test_mirror_follows_finishes_removals_and_vanished_submits():
    now = [100.0]
    q = core(clock=lambda: now[0])
    feed = Feed(q)
    m = Mirror(feed, cleanup_age_s=60, clock=Clock())
    submit(q, "j0")
    submit(q, "j1")
    sync(m, feed)
    q.claim("w1")
    q.complete("j0", "r.png", 1.0)
    q.discard("j1")  # its storing failed: as if it never came
    sync(m, feed)
    assert m.job("j0", A).status is JobStatus.COMPLETED and m.job("j1", A) is None
    now[0] += 61
    q.expire()
    sync(m, feed)
    assert m.job("j0", A) is None and m.views == {}


def test_a_new_queue_epoch_replaces_everything():
    q1 = core()
    submit(q1, "old")
    m = Mirror(Feed(q1), cleanup_age_s=60, clock=Clock())
    sync(m, Feed(q1, "e1"))
    q2 = core()  # a replaced queue replica: its own versions from 0
    submit(q2, "new")
    m.apply(Feed(q2, "e2").answer(m.epoch, m.version))
    assert set(m.views) == {"new"} and m.epoch == "e2"


def test_pump_keeps_the_mirror_fresh_and_stops_serving_when_the_feed_fails():
    async def main():
        q = core()
        submit(q, "ja")
        feed = Feed(q)
        m = Mirror(feed, cleanup_age_s=60)
        m.start()
        while not m.fresh:
            await asyncio.sleep(0.005)
        assert m.job("ja", A).position == 1
        submit(q, "jb")
        while m.job("jb", A) is None:  # the pump asks again at once: the next answer lists it
            await asyncio.sleep(0.005)
        feed.fail = ConnectionError("queue away")
        while m.fresh:
            await asyncio.sleep(0.005)
        assert m.job("ja", A) is None  # reads go to the queue (503 while it is away)
        feed.fail = None
        while not m.fresh:
            await asyncio.sleep(0.005)
        await m.stop()

    asyncio.run(asyncio.wait_for(main(), 10))


def test_room_hint_follows_the_queue_and_each_station_limit():
    q = core(max_size=3, max_per_station=2)
    feed = Feed(q)
    m = Mirror(feed, cleanup_age_s=60, clock=Clock())
    assert not m.has_room("a", 2)  # cannot tell yet: ask the queue
    submit(q, "j0", "a")
    sync(m, feed)
    assert m.has_room("a", 2) and m.has_room("b", 2)
    submit(q, "j1", "a")
    sync(m, feed)
    assert not m.has_room("a", 2) and m.has_room("a", None) and m.has_room("b", 2)
    submit(q, "j2", "b")
    sync(m, feed)
    assert not m.has_room("b", 2) and not m.has_room("c", None)  # full


def test_after_a_write_other_jobs_come_from_the_queue_until_the_feed_brings_it():
    """A submit ahead of others (fair order, priorities) or a cancel moves the positions of jobs it
    did not name: their views in the mirror predate the write, so they are not served until the
    mirror has reached it (the station would otherwise see two jobs at one position)."""
    q = core(scheduling="fair")
    feed = Feed(q)
    m = Mirror(feed, cleanup_age_s=60, clock=Clock())
    submit(q, "a1")
    submit(q, "a2")
    sync(m, feed)
    assert m.job("a2", A).position == 2
    submit(q, "b1", station="b")  # fair: b was never served, so b1 goes ahead of a2
    m.note(q.view(q.get("b1")))
    assert m.job("b1", B).position == 2  # the write itself: read your writes
    assert m.job("a2", A) is None and m.catching_up  # moved by it: asked of the queue
    sync(m, feed)
    assert m.job("a2", A).position == 3 and not m.catching_up


def test_pump_asks_the_feed_at_once_after_a_write_not_after_the_batch():
    async def main():
        q = core()
        feed = Feed(q)
        m = Mirror(feed, cleanup_age_s=60, batch_s=30.0)  # a batch far longer than the test
        m.start()
        while not m.fresh:
            await asyncio.sleep(0.005)
        submit(q, "ja")
        m.note(q.view(q.get("ja")))
        while m.catching_up:
            await asyncio.sleep(0.005)
        assert m.queue_stats()["queue_size"] == 1
        await m.stop()

    asyncio.run(asyncio.wait_for(main(), 5))
