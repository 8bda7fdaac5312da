"""The order queued jobs will start in, from the queue's state: a pure function, no clock.

Jobs of a higher priority start before every lower one that waits; the scheduling policy orders jobs
of one priority (``fifo``: submission order; ``fair``: stations in turn, the one served longest ago
first, FIFO within each); a job passed ``max_passes`` times (jobs of higher priority submitted after
it started first) starts next. ``JobQueue.claim`` picks the same way, so this order is the truth.
"""

import bisect
from collections import deque
from collections.abc import Mapping, Sequence

from ..auth import PRIORITIES
from .job import Job

RANK = {name: n for n, name in enumerate(PRIORITIES)}  # low 0, normal 1, high 2


def start_order(jobs: Mapping[str, Job], queued: Sequence[str], *, fair: bool, served: Mapping[str, int],
                tick: int, max_passes: int) -> list[str]:
    """The ids of ``queued`` (in submission order) in the order they will start. ``served``: station ->
    the tick its last job was handed out at (``fair``); ``tick``: the next one.

    Picks jobs the way ``claim`` will, one after the other, counting the passes each pick causes.
    Jobs wait in lanes (one per priority, and per station under ``fair``), oldest first; the oldest
    job of a lane has been passed at least as often as any other in it, so only lane heads need
    looking at: O(jobs x lanes)."""
    queued = list(queued)
    lanes: dict[tuple[int, str], deque[int]] = {}
    for n, job_id in enumerate(queued):  # n: queue order, which is submission (ticket) order
        job = jobs[job_id]
        lanes.setdefault((RANK[job.priority], job.station if fair else ""), deque()).append(n)
    picked: list[list[int]] = [[] for _ in PRIORITIES]  # per rank: queue indexes picked, sorted
    served = dict(served)

    def passes_of(lane: tuple[int, str]) -> int:
        n = lanes[lane][0]
        later = sum(len(p) - bisect.bisect_right(p, n) for p in picked[lane[0] + 1:])
        return jobs[queued[n]].passes + later

    heads = {lane: passes_of(lane) for lane in lanes}
    order: list[str] = []
    while heads:
        starved = [lane for lane, passed in heads.items() if passed >= max_passes]
        if starved:
            lane = min(starved, key=lambda ln: lanes[ln][0])
        else:
            top = max(rank for rank, _ in heads)
            lane = min((ln for ln in heads if ln[0] == top),
                       key=lambda ln: (served.get(jobs[queued[lanes[ln][0]]].station, -1), lanes[ln][0]))
        n = lanes[lane].popleft()
        job = jobs[queued[n]]
        order.append(job.id)
        for other in heads:  # the waiting lane heads this pick passes
            if other[0] < lane[0] and lanes[other][0] < n:
                heads[other] += 1
        bisect.insort(picked[lane[0]], n)
        served[job.station], tick = tick, tick + 1
        if lanes[lane]:
            heads[lane] = passes_of(lane)
        else:
            del heads[lane]
    return order
