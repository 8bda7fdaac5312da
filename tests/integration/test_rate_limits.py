"""Per-station rate limits through the real Serve app: a station over its rate gets 429 with
Retry-After and a sentence, while another station's requests are served."""

import time

import pytest
import yaml

pytestmark = pytest.mark.integration
KEYS = {"flood": "station-flood-key-" + "f" * 20, "calm": "station-calm-key-" + "c" * 20}


def test_a_flooding_station_is_refused_and_the_others_are_served(cluster, deploy, remove_after):
    keys = cluster["root"] / "rate-keys.yaml"
    keys.write_text(yaml.safe_dump(KEYS))
    # No worker ever starts (parked): the routes used here need only the ingress and the queue.
    api = deploy("rated", "/rated", wait_workers=False, api_keys_file=str(keys),
                 rate_limit={"requests_per_second": 1, "burst": 5},
                 worker={"num_cpus": 0, "resources": {"parking": 1}})
    remove_after("rated")
    flood, calm = api.as_key(KEYS["flood"]), api.as_key(KEYS["calm"])
    start = time.monotonic()
    answers = [flood.http.get("/api/v1/queue") for _ in range(10)]
    elapsed = time.monotonic() - start
    codes = [r.status_code for r in answers]
    assert codes[:6] == [200] * 5 + [429], codes  # the burst, then refused
    assert codes.count(200) <= 5 + elapsed * 1 + 1, (codes, elapsed)  # never more than the rate allows
    assert elapsed >= 0.5  # a refusal is held until a token is due (at most a second), not answered at once
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["detail"].startswith("Too many requests from station flood: at most 1 per second")
    assert [calm.http.get("/api/v1/queue").status_code for _ in range(5)] == [200] * 5
    assert api.http.get("/api/v1/health").status_code in (200, 503)  # public: never counted (no key)
