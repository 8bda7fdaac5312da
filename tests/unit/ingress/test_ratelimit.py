"""Per-station token buckets (serve_app/ingress/ratelimit.py) with a fake clock, and the 429 they become."""

import pytest

from serve_app.errors import RateLimited
from serve_app.ingress.ratelimit import RateLimiter


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_a_burst_then_the_rate_and_the_wait_until_the_next_token():
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("A") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("A") == pytest.approx(0.5)  # one token per half second
    clock.t += 0.25
    assert limiter.take("A") == pytest.approx(0.25)  # refused requests take no token
    clock.t += 0.25
    assert limiter.take("A") == 0.0
    clock.t += 60  # idle: the bucket refills to the burst, no further
    assert [limiter.take("A") for _ in range(4)][-1] == pytest.approx(0.5)


def test_stations_have_their_own_buckets():
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.take("flood") == 0.0
    assert all(limiter.take("flood") > 0 for _ in range(1000))
    assert limiter.take("calm") == 0.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0.5)


def test_the_refusal_says_what_to_do_and_when():
    err = RateLimited("A", 20, 60, 0.2)
    assert err.status_code == 429 and err.headers == {"Retry-After": "1"}
    assert err.detail == ("Too many requests from station A: at most 20 per second on average (bursts of 60). "
                          "Retry in 1s; poll less often, or follow /api/v1/status/{job_id}/events instead.")
