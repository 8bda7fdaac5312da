"""Autoscaling check, run by tests/integration/test_autoscaling.py in its own process (and by
bench/autoscaling.py for its figures).

A Ray cluster of three nodes on this machine (``ray.cluster_utils.Cluster``): the head (queue,
ingress, proxy) and two "GPU nodes", each with one faked GPU (the custom resource ``fake_gpu``)
that a model worker needs. The workers autoscale from 0 to 2. Phases, each bounded in time:

1. no worker: health says healthy, with zero workers and the bounds;
2. a submit starts a worker; while it starts, the job's status says why it waits;
3. a burst of ten jobs raises the workers to the maximum; every job completes exactly once;
4. the queue empty, the workers go back to zero; a blocking /edit then waits for a cold start and
   answers the picture;
5. a worker Serve stops while its job runs finishes that job (or hands it back) before it goes;
   nothing is lost, run twice or left processing.

Prints one JSON line per phase and a last one with everything seen; exits non-zero on failure.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import KEY, SLOW, config_args, free_port, merged, photo, qwen_metrics, wait_for  # noqa: E402

MID = {**SLOW, "steps": 12, "nominal_seconds": 3.0}
LONG = {**SLOW, "steps": 100, "resolution": 512, "nominal_seconds": 50.0}
ENDLESS = {**SLOW, "steps": 200, "resolution": 768, "nominal_seconds": 200.0}  # runs until it is cancelled
SCALING = {"min_workers": 0, "max_workers": 2, "upscale_delay_seconds": 0, "downscale_delay_seconds": 2,
           "downscale_to_zero_delay_seconds": 4, "look_back_seconds": 2, "cold_start_seconds": 30}


class Station:
    def __init__(self, base: str):
        self.http = httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=60)
        self.image = photo(256, 192)

    def get(self, path: str) -> httpx.Response:
        """A read, tried again after a dropped connection (a station's poll does the same: Serve's
        proxy may close an idle keep-alive connection just as a request goes out on it)."""
        for attempt in range(3):
            try:
                return self.http.get(path)
            except httpx.TransportError:
                if attempt == 2:
                    raise
                time.sleep(0.5)

    def health(self) -> dict:
        return self.get("/api/v1/health").json()

    def submit(self, preset: str, seed: int) -> str:
        r = self.http.post("/api/v1/submit", files={"image": ("a.png", self.image, "image/png")},
                           data={"instruction": "make it blue", "seed": str(seed), "preset": preset})
        assert r.status_code == 200, r.text
        return r.json()["job_id"]

    def status(self, job_id: str) -> dict:
        return self.get(f"/api/v1/status/{job_id}").json()

    def until(self, what, check, timeout: float, every: float = 0.2):
        """The first truthy ``check()`` within ``timeout`` seconds, else fail naming ``what``."""
        return wait_for(check, timeout, every, show=lambda: f"{what}: not within {timeout:g}s; health: {self.health()}")

    def done(self, job_id: str, timeout: float) -> dict:
        return self.until(f"job {job_id[:8]} finished", lambda: (s := self.status(job_id))["status"] in (
            "completed", "failed", "cancelled") and s, timeout)


def workers_up(station: Station) -> int:
    return station.health()["autoscaling"]["workers"]


class FakeGpuCluster:
    """The head (queue, ingress, proxy, Serve's controller) and ``gpu_nodes`` nodes with one faked GPU
    (``fake_gpu``) each; Serve's HTTP proxy on a free loopback port, metrics on another."""

    def __enter__(self, gpu_nodes: int = 2):
        self.port, self.metrics_port = free_port(), free_port()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "include_dashboard": False, "metrics_export_port": self.metrics_port,
            "resources": {"qwen_head": 100}})
        for _ in range(gpu_nodes):
            self.cluster.add_node(num_cpus=1, resources={"fake_gpu": 1})
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, log_to_driver=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.port})
        return self

    def deploy(self, name: str, worker: dict, **args) -> Station:
        """An app of config/serve.yaml's args on its own state folder, its workers on the GPU nodes."""
        from serve_app.deployments import build_app

        state = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        (state / "api_key").write_text(KEY)
        app = merged(config_args(), {"state_dir": str(state), "presets": {"mid": MID, "long": LONG, "endless": ENDLESS},
                                     # the queue and ingress on the head, as config/serve.cluster.yaml
                                     # places them: each GPU node holds one worker and nothing else
                                     "queue_resources": {"qwen_head": 1}, "ingress_resources": {"qwen_head": 1},
                                     "worker": {"num_cpus": 1, "resources": {"fake_gpu": 1}}, **args})
        if "autoscaling" in worker:
            app["worker"].pop("num_replicas", None)
        app["worker"].update(worker)
        serve.run(build_app(app), name=name, route_prefix=f"/{name}")
        return Station(f"http://127.0.0.1:{self.port}/{name}")

    def __exit__(self, *exc):  # (no serve.shutdown(): stopping each replica gracefully only delays the end)
        ray.shutdown()
        self.cluster.shutdown()


def burst(st: Station, jobs: int, preset: str = "mid", seed: int = 10) -> dict:
    """``jobs`` submitted at once; waits for all, watching the workers up. Seconds, the peak of
    workers, each job's final status, and the seconds from submit to the first job's first step."""
    start = time.monotonic()
    ids = [st.submit(preset, seed + i) for i in range(jobs)]
    peak, first_step, states = 0, None, []
    while time.monotonic() - start < 300:
        health = st.health()
        peak = max(peak, (health.get("autoscaling") or {}).get("workers", len(health["workers"])))
        states = [st.status(j) for j in ids]
        if first_step is None and any(s["step"] >= 1 or s["status"] == "completed" for s in states):
            first_step = time.monotonic() - start
        if all(s["status"] in ("completed", "failed", "cancelled") for s in states):
            break
        time.sleep(0.3)
    took = time.monotonic() - start
    return {"seconds": round(took, 2), "jobs_per_minute": round(jobs * 60 / took, 2), "peak_workers": peak,
            "first_step_s": first_step and round(first_step, 2), "states": states}


def stop_one_of_two(st: Station, keep_older: bool, seed: int) -> dict:
    """Two endless jobs on two workers (the second submit starts the second worker) and a long one
    queued behind them; the endless job of the worker to keep busy is cancelled, so that worker
    takes the long one, then the other endless job is cancelled: one job runs, Serve wants one
    worker and stops one of the two. The long job must complete exactly once with ``attempts: 1``,
    whether its worker was the one stopped (it finished the job first, or handed it back and the
    other ran it) or not. Which worker left, and what became of the job."""
    e1 = st.submit("endless", seed)
    st.until("the first endless job running", lambda: st.status(e1)["step"] >= 1, 180, 0.2)
    older = st.status(e1)["worker"]
    e2 = st.submit("endless", seed + 1)
    st.until("the second endless job running", lambda: st.status(e2)["step"] >= 1, 180, 0.2)
    newer = st.status(e2)["worker"]
    assert older != newer, (older, newer)
    kept = st.submit("long", seed + 2)
    (freed, other), busy = ((e1, e2), older) if keep_older else ((e2, e1), newer)
    assert st.http.delete(f"/api/v1/status/{freed}").status_code == 200
    st.until("the long job running", lambda: st.status(kept)["step"] >= 1, 60, 0.2)
    assert st.status(kept)["worker"] == busy, (st.status(kept), busy)
    assert st.http.delete(f"/api/v1/status/{other}").status_code == 200
    # One job runs: Serve wants one worker. A busy worker chosen to stop keeps heartbeating until
    # it finished (or handed back) its job, so one worker is left only then.
    st.until("one worker left", lambda: workers_up(st) == 1, 240, 0.3)
    left = [w["id"][-8:] for w in st.health()["workers"]]
    finished = st.done(kept, 240)
    assert finished["status"] == "completed" and finished["attempts"] == 1, finished
    stopped_busy = busy not in left
    then = ("finished its job" if finished["worker"] == busy else "handed its job back") if stopped_busy else None
    return {"kept_on": "older" if keep_older else "newer", "left": left, "stopped_while_running": stopped_busy,
            "then": then}


def main() -> int:
    seen: dict = {}
    with FakeGpuCluster() as cluster:
        seen.update(nodes=len(ray.nodes()), gpu_nodes=2)
        st = cluster.deploy("scaled", {"autoscaling": SCALING}, graceful_stop_seconds=60)

        # 1. No worker, nothing waiting: healthy.
        health = st.health()
        assert health["status"] == "healthy" and health["autoscaling"]["workers"] == 0, health
        assert health["autoscaling"]["min_workers"] == 0 and health["autoscaling"]["max_workers"] == 2, health
        print(json.dumps({"phase": 1, "health": health["status"], "workers": 0}), flush=True)

        # 2. A submit starts a worker; the job says why it waits.
        submitted = time.monotonic()
        first = st.submit("mid", 1)
        waiting = st.status(first)
        assert waiting["status"] == "queued", waiting
        assert (waiting["message"] or "").startswith("Waiting for a model worker to start"), waiting
        assert waiting["eta_seconds"] >= 30, waiting  # the configured start time until one is measured
        during = st.health()["status"]
        st.until("the first step of a job on a cold worker", lambda: st.status(first)["step"] >= 1, 180, 0.1)
        cold_s = time.monotonic() - submitted
        result = st.done(first, 120)
        assert result["status"] == "completed" and result["attempts"] == 1 and result["message"] is None, result
        measured = st.health()["autoscaling"]["measured_start_seconds"]
        assert len(measured) == 1, measured
        seen.update(cold_start_to_first_step_s=round(cold_s, 2), measured_start_s=measured[0],
                    health_while_starting=during)
        print(json.dumps({"phase": 2, "cold_start_to_first_step_s": round(cold_s, 2), "measured": measured}),
              flush=True)

        # 3. Ten jobs at once: the workers rise to the maximum; each job completes once.
        ran = burst(st, 10)
        states, peak = ran["states"], ran["peak_workers"]
        assert [s["status"] for s in states] == ["completed"] * 10, states
        assert [s["attempts"] for s in states] == [1] * 10, states
        ran_on = {s["worker"] for s in states}
        assert peak == 2 and len(ran_on) == 2, (peak, ran_on)
        seen.update(burst_seconds=ran["seconds"], burst_jobs_per_minute=ran["jobs_per_minute"], peak_workers=peak)

        # The dashboard's workers panel: wanted (recorded by Serve's controller) and running (by the
        # queue replica), from every node's metrics port (Prometheus scrapes them all).
        def scraped():
            found: dict = {}
            for node in ray.nodes():
                if node["Alive"]:
                    for name, samples in qwen_metrics(node["MetricsExportPort"]).items():
                        found.setdefault(name, []).extend(samples)
            return {name: max(s.value for s in found[name]) for name in ("ray_qwen_workers_desired",
                                                                        "ray_qwen_workers_running") if found.get(name)}
        gauges = st.until("the workers' gauges in the head's scrape", lambda: len(scraped()) == 2 and scraped(),
                          60, 2)
        assert all(0 <= v <= 2 for v in gauges.values()), gauges
        seen["gauges"] = gauges
        print(json.dumps({"phase": 3, "peak_workers": peak, "burst_s": ran["seconds"], "ran_on": len(ran_on)}),
              flush=True)

        # 4. Empty queue: back to zero workers (downscale delay 2 s, the last one after 4 s).
        gone = time.monotonic()
        st.until("the workers back to zero", lambda: workers_up(st) == 0, 120, 0.5)
        seen["back_to_zero_s"] = round(time.monotonic() - gone, 2)
        health = st.health()
        assert health["status"] == "healthy", health
        print(json.dumps({"phase": 4, "back_to_zero_s": seen["back_to_zero_s"]}), flush=True)

        # 4b. From zero again: a blocking /edit waits for the cold start and answers the picture.
        r = st.http.post("/api/v1/edit", files={"image": ("a.png", st.image, "image/png")},
                         data={"instruction": "make it blue", "seed": "7", "preset": "mid"}, timeout=300)
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG", (r.status_code, r.text[:300])
        edited = st.status(r.headers["X-Job-Id"])
        assert edited["status"] == "completed" and edited["attempts"] == 1, edited
        measured = st.health()["autoscaling"]["measured_start_seconds"]
        assert len(measured) == 2, measured
        print(json.dumps({"phase": "4b", "edit_from_zero": "completed", "measured": measured}), flush=True)

        # 5. A job on the worker Serve stops: one job left running on one of two workers, Serve
        # wants one worker and stops one of the two, not knowing which is busy (on this cluster,
        # with one replica on each GPU node, the older one). The older worker is kept busy first;
        # if Serve stopped the idle worker instead, again with the newer one busy.
        rounds = []
        for keep_older in (True, False):
            rounds.append(stop_one_of_two(st, keep_older, 101 + 10 * len(rounds)))
            print(json.dumps({"phase": 5, **rounds[-1]}), flush=True)
            if rounds[-1]["stopped_while_running"]:
                break
        busy = [r for r in rounds if r["stopped_while_running"]]
        assert busy, ("Serve stopped the idle worker both times", rounds)
        seen.update(stopped_while_running=True, stopped_worker_then=busy[0]["then"])
        st.until("the workers back to zero", lambda: workers_up(st) == 0, 120, 0.5)
        stats = st.get("/api/v1/queue").json()
        assert stats["processing_count"] == 0 and stats["queued_count"] == 0, stats
        assert stats["completed_count"] == 12 + len(rounds) and stats["failed_count"] == 0, stats
        assert stats["cancelled_count"] == 2 * len(rounds), stats
        print(json.dumps({"ok": True, **seen}), flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
