"""Priorities with their starvation bound, and preset-aware dispatch, in the queue's pure core
(serve_app/queue/core.py): a fake clock, no Ray."""

import itertools
import random

import pytest

from serve_app.queue.core import JobQueue


def make(scheduling="fifo", max_passes=3):
    return JobQueue(50, 3600, {"a": 10.0, "b": 10.0, "c": 10.0}, clock=lambda: 1_700_000_000.0,
                    scheduling=scheduling, max_passes=max_passes)


def add(q, name, priority="normal", station="s", preset="a"):
    return q.submit(name, instruction="x", preset=preset, seed=0, station=station, priority=priority)


def started(q, worker="w"):
    job = q.claim(worker)
    if job is not None:
        q.complete(job.id, job.id + ".png", 1.0)
    return None if job is None else job.id


def test_higher_priority_starts_first_fifo_within_a_priority():
    q = make(max_passes=100)
    for name, prio in [("n1", "normal"), ("l1", "low"), ("h1", "high"), ("n2", "normal"), ("h2", "high")]:
        add(q, name, prio)
    assert q.order() == ["h1", "h2", "n1", "n2", "l1"]
    assert [started(q) for _ in range(5)] == ["h1", "h2", "n1", "n2", "l1"]


def test_a_queued_job_moves_back_when_a_higher_one_arrives_and_its_eta_says_so():
    q = make()
    low = add(q, "low", "low")
    assert q.position(low) == 1 and q.estimated_start(low) == 0
    add(q, "urgent", "high")
    assert q.position(low) == 2 and q.estimated_start(low) == 10.0
    assert q.view(low).priority == "low"


def test_a_waiting_job_is_passed_at_most_max_passes_times():
    q = make(max_passes=2)
    add(q, "low", "low")
    for i in range(5):
        add(q, f"h{i}", "high")
    # predicted order already includes the bound, so position and ETA tell the truth
    assert q.order() == ["h0", "h1", "low", "h2", "h3", "h4"]
    assert q.position(q.get("low")) == 3
    assert [started(q) for _ in range(6)] == ["h0", "h1", "low", "h2", "h3", "h4"]


def test_jobs_submitted_before_the_low_one_do_not_count_as_passing_it():
    q = make(max_passes=1)
    add(q, "h0", "high")
    add(q, "low", "low")
    add(q, "h1", "high")
    add(q, "h2", "high")
    assert [started(q) for _ in range(4)] == ["h0", "h1", "low", "h2"]


def test_max_passes_zero_is_plain_fifo():
    q = make(max_passes=0)
    add(q, "low", "low")
    add(q, "high", "high")
    assert q.order() == ["low", "high"]


def test_new_arrivals_keep_passing_counted_across_claims():
    q = make(max_passes=2)
    add(q, "low", "low")
    add(q, "h0", "high")
    assert started(q) == "h0"  # passed once
    add(q, "h1", "high")
    assert q.get("low").passes == 1 and q.order() == ["h1", "low"]
    assert started(q) == "h1"
    add(q, "h2", "high")
    assert q.order() == ["low", "h2"]  # passed twice: next, ahead of a newer high job


def test_fair_scheduling_within_a_priority():
    q = make("fair", max_passes=100)
    for name, station, prio in [("a1", "A", "normal"), ("a2", "A", "normal"), ("b1", "B", "normal"),
                                ("a3", "A", "high"), ("b2", "B", "high")]:
        add(q, name, prio, station)
    assert q.order() == ["a3", "b2", "a1", "b1", "a2"]


@pytest.mark.parametrize("scheduling", ["fifo", "fair"])
def test_predicted_order_is_the_claim_order(scheduling):
    """Truthful positions: on random mixes, with no arrivals in between, jobs start exactly in the
    order predicted before the first one started."""
    rnd = random.Random(7)
    for trial in range(200):
        q = make(scheduling, max_passes=rnd.randint(0, 4))
        names = iter(itertools.count())
        for _ in range(rnd.randint(1, 20)):
            add(q, f"j{next(names)}", rnd.choice(["low", "normal", "high"]), rnd.choice("ABC"))
        for _ in range(rnd.randint(0, 3)):  # some history: passes already counted, stations served
            started(q)
        predicted = list(q.order())
        assert [started(q) for _ in predicted] == predicted, trial


# --- preset-aware dispatch ---------------------------------------------------------------------------

def test_an_idle_worker_holding_the_preset_gets_the_job():
    q = make()
    add(q, "needs-b", preset="b")
    idle = {"w1": "a", "w2": "b"}
    assert q.claim("w1", "a", idle) is None  # w2 holds b: w1 leaves it
    assert q.claim("w2", "b", idle).id == "needs-b"


def test_the_jobs_about_to_start_are_matched_to_the_workers_that_hold_them():
    q = make()
    add(q, "j-a", preset="a")
    add(q, "j-b", preset="b")
    add(q, "j-c", preset="c")
    idle = {"w1": "b", "w2": "a"}
    assert q.claim("w1", "b", idle).id == "j-b"  # not the head of the queue, but it holds b
    assert q.claim("w2", "a", {"w2": "a"}).id == "j-a"
    assert q.order() == ["j-c"]  # the start order is unchanged: a and b started, c is next


def test_without_a_holder_the_worker_whose_preset_nobody_needs_switches():
    q = make()
    add(q, "j-c", preset="c")
    add(q, "j-a", preset="a")
    idle = {"w1": "a", "w2": "b"}
    assert q.claim("w1", "a", idle).id == "j-a"
    assert q.claim("w2", "b", {"w2": "b"}).id == "j-c"


def test_one_worker_always_takes_the_head_of_the_queue():
    q = make()
    add(q, "j-b", preset="b")
    add(q, "j-a", preset="a")
    assert q.claim("w1", "a", {}).id == "j-b"


def test_affinity_counts_fewer_switches_on_a_mixed_stream():
    """Two workers, a random stream of three presets: matching halves the switches or better."""
    def switches(affinity: bool) -> int:
        rnd = random.Random(3)
        q = make()
        held = {"w1": None, "w2": None}
        count, n = 0, 0
        for _ in range(100):
            while q.stats()["queued_count"] < 6:
                add(q, f"j{n}", preset=rnd.choice("abc"))
                n += 1
            for w in held:  # both idle at once: each asks, the other waiting too
                idle = dict(held) if affinity else {}
                job = q.claim(w, held[w], idle)
                if job is None:
                    continue
                count += held[w] not in (None, job.preset)
                held[w] = job.preset
                q.complete(job.id, "r.png", 1.0)
        return count

    before, after = switches(False), switches(True)
    print("switches per 100 rounds, before and after:", before, after)
    assert after * 2 <= before, (before, after)


def test_the_worker_that_switches_holds_the_preset_asked_for_least_lately():
    q = make()
    for n in range(6):  # lately: mostly a, some b
        add(q, f"old{n}", preset="a" if n % 3 else "b")
        q.claim("w9")
    add(q, "needs-c", preset="c")
    idle = {"w1": "a", "w2": "b"}  # neither holds c: w2 switches, keeping the popular a
    assert q.claim("w1", "a", idle) is None
    assert q.claim("w2", "b", idle).id == "needs-c"
