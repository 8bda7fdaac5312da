"""The GPU config's placement, config validation, a worker dying mid-job, and decoded images gone
with the ingress replica that shared them."""

import time

import httpx
import pytest
from pydantic import ValidationError

from serve_app.deployments import build_app
from tests.helpers import IMAGE, kill_replica, remove_app, wait_for, worker_info

pytestmark = pytest.mark.integration


def test_gpu_config_pins_the_worker_to_a_gpu(gpu_api, api):
    info = worker_info("gpu")
    assert info["gpu_ids"] == [0]  # num_gpus: 1 from config/serve.gpu.yaml reached the replica
    main_info = worker_info("main")
    assert main_info["gpu_ids"] == [] and main_info["device"] == "cpu"
    # no default preset: the contract's answer, never a hang
    r = gpu_api.submit(IMAGE)
    assert r.status_code == 400
    assert r.json() == {"detail": "No model loaded. Please call /api/v1/load-model first to load a model."}
    # the worker comes up ("starting" while its replica starts) and waits, idle, with no model
    health = wait_for(lambda: (h := gpu_api.http.get("/api/v1/health").json())["workers"]
                      and h["workers"][0]["state"] != "starting" and h, 60, every=0.5,
                      show=lambda: gpu_api.http.get("/api/v1/health").json())
    assert health["model_loaded"] is False and health["workers"][0]["state"] == "idle"


def test_load_model_then_submit_and_409_while_loading(gpu_api):
    from concurrent.futures import ThreadPoolExecutor

    def load():
        return gpu_api.http.post("/api/v1/load-model", params={"model": "tiny"})

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(load)
        time.sleep(0.5)  # the first load imports diffusers in that worker: seconds
        second = load()
        first = first.result()
    assert first.status_code == 200, first.text
    assert first.json()["load_time_seconds"] > 0 and first.json()["model"] == "tiny"
    assert second.status_code == 409 and second.json()["detail"].startswith("A model load is already running (tiny)")
    health = gpu_api.http.get("/api/v1/health").json()
    assert health["current_model"] == "tiny" and health["model_loaded"] is True
    job = gpu_api.submit(IMAGE).json()  # no preset: the loaded default
    done = gpu_api.wait(job["job_id"], timeout=60)
    assert done["status"] == "completed" and done["model"] == "tiny"


def test_config_is_validated_with_a_clear_message():
    with pytest.raises(ValidationError, match="max_queue_siz"):
        build_app({"max_queue_siz": 10})
    with pytest.raises(ValidationError, match="max_queue_size"):
        build_app({"max_queue_size": 0})
    with pytest.raises(Exception, match="Unknown preset 'nope'"):
        build_app({"default_preset": "nope"})


def test_worker_killed_mid_job_runs_it_once_more_then_fails_it_and_service_recovers(api):
    api.drain()
    job_id = api.submit(IMAGE, preset="long").json()["job_id"]

    def processing(attempt):
        deadline = time.monotonic() + 120
        while not ((s := api.status(job_id).json())["status"] == "processing" and s["attempts"] == attempt):
            assert time.monotonic() < deadline, s
            time.sleep(0.05)

    processing(1)
    kill_replica("main")
    processing(2)  # the replacement replica runs it again: the first run was interrupted
    kill_replica("main")
    done = api.wait(job_id, timeout=60)
    assert done["status"] == "failed" and done["error"].startswith("worker lost") and done["attempts"] == 2
    q = api.http.get("/api/v1/queue").json()
    assert q["processing_count"] == 0 and q["failed_count"] >= 1
    # Serve replaces the replica; the next job runs on it
    after = api.submit(IMAGE).json()["job_id"]
    assert api.wait(after, timeout=120)["status"] == "completed"


def test_a_worker_whose_profile_cannot_run_stays_up_and_says_why(deploy, api):
    h = api.http.get("/api/v1/health").json()  # the main app's CPU worker: auto chose bf16, and says so
    assert h["workers"][0]["profile"] == "bf16" and "CPU" in h["workers"][0]["profile_reason"]
    fp8 = deploy("fp8", "/fp8", wait_workers=False, worker={"num_cpus": 0, "profile": "fp8"})
    try:
        h = wait_for(lambda: (h := fp8.http.get("/api/v1/health").json())
                     and any(w["state"] == "unusable" for w in h["workers"]) and h, 120, every=0.5,
                     show=lambda: fp8.http.get("/api/v1/health").json())
        worker = h["workers"][0]
        sentence = worker["detail"]
        assert sentence.startswith("Profile fp8 needs FP8 tensor cores") and "this worker has no GPU" in sentence
        assert h["status"] == "degraded" and h["model_loaded"] is False
        assert any(sentence in w for w in h["warnings"])
        refused = fp8.submit(IMAGE)  # refused at once with the reason, rather than queued for ever
        assert refused.status_code == 503 and sentence in refused.json()["detail"]
        loading = fp8.http.post("/api/v1/load-model", params={"model": "tiny"})
        assert loading.status_code == 503 and sentence in loading.json()["detail"]
        time.sleep(4)  # no crash loop: the same replica is still there, still saying why
        later = fp8.http.get("/api/v1/health").json()["workers"]
        assert [(w["id"], w["state"]) for w in later] == [(worker["id"], "unusable")]
    finally:
        remove_app("fp8")


def test_a_job_whose_decoded_images_are_gone_decodes_its_upload_with_the_same_pixels(api):
    """The ingress decodes each upload once and shares the pixels by reference; the replica that made
    that reference owns it. Killed before the job starts, the reference is gone: the worker asks
    the queue for the stored upload and decodes it, and the result is the same as by the usual path.
    The app makes its small queue calls by gRPC (``internal_calls: grpc``, the default) while the
    reference travels as a Ray call: this cluster refuses out-of-band references (conftest), so a
    reference sent by gRPC would fail the submit."""
    api.drain()
    assert worker_info("main")["internal_calls"] == "grpc"
    blocker = api.submit(IMAGE, preset="long").json()["job_id"]
    wait_for(lambda: api.status(blocker).json()["status"] == "processing", timeout=120)
    queued = api.submit(IMAGE, seed=7).json()["job_id"]
    before = worker_info("main")["inputs_refetched"]
    kill_replica("main", "Ingress")  # Serve starts another; the queued job's pixels went with this one

    def answers():
        try:
            return api.status(queued).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout=120, every=0.5)
    api.http.delete(f"/api/v1/status/{blocker}")
    assert api.wait(queued, timeout=120)["status"] == "completed"
    assert worker_info("main")["inputs_refetched"] == before + 1
    again = api.submit(IMAGE, seed=7).json()["job_id"]  # the usual path: pixels from the ingress
    assert api.wait(again, timeout=120)["status"] == "completed"
    assert worker_info("main")["inputs_refetched"] == before + 1
    first, second = (api.http.get(f"/api/v1/status/{j}/result").content for j in (queued, again))
    assert first == second and first.startswith(b"\x89PNG")
