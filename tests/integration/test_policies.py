"""Issue 23 through real Serve apps: a refused prompt is never queued nor stored, a result the
output check withholds fails its job with the labels found and leaves no file, an upload the check
refuses is a 400, and /health, /models and the worker's log say what each preset really runs."""

import hashlib
import io
import json
import time

import pytest
from PIL import Image

from serve_app.worker import provenance
from tests.helpers import IMAGE, KEY, Receiver, logs_folder, qwen_metrics, read_events, remove_app, wait_for

pytestmark = pytest.mark.integration
REFUSED = "Prompt contains disallowed term(s): {}. Please revise and try again."
WITHHELD = "Result withheld by the server's output check: it found FACE_FEMALE. No image was kept."


def _results(api) -> set[str]:
    folder = api.state / "results"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def _total_jobs(api) -> int:
    return api.http.get("/api/v1/queue").json()["total_jobs"]


def test_a_refused_prompt_is_never_queued_nor_stored_on_submit_or_edit(api):
    api.drain()
    jobs, files = _total_jobs(api), _results(api)
    cases = [({"instruction": "make her Topless, please"}, "topless"),
             ({"instruction": "a fake nude"}, "fake, nude"),
             ({"instruction": "make the sky blue", "system_prompt": "You make NSFW! pictures"}, "nsfw"),
             ({"instruction": "ｎｕｄｅ beach"}, "nude")]
    for fields, terms in cases:
        for route in ("/api/v1/submit", "/api/v1/edit"):
            r = api.http.post(route, files={"image": ("in.png", IMAGE, "image/png")}, data=fields)
            assert (r.status_code, r.json()) == (400, {"detail": REFUSED.format(terms)}), (route, fields)
    assert _total_jobs(api) == jobs and _results(api) == files
    # words that only contain a term are not refused, as the earlier filter did not refuse them
    ok = api.submit(IMAGE, instruction="fakes and nudes of the sky", seed=1)
    assert ok.status_code == 200 and api.wait(ok.json()["job_id"])["status"] == "completed"

    def refusal_logged():
        text = "".join(p.read_text(errors="replace") for p in logs_folder().glob("replica_main_Ingress_*.log"))
        return "prompt refused for station" in text and text

    text = wait_for(refusal_logged, timeout=15)
    assert KEY not in text  # the station's name, never its key


def test_what_each_preset_runs_is_visible_in_health_models_and_the_log(api):
    models_dir = api.state.parent / "models"
    workers = api.http.get("/api/v1/health").json()["workers"]
    assert workers
    running = workers[0]["running"]
    assert running["libraries"] == provenance.libraries()  # the same .venv as this test
    assert set(running["libraries"]) == {"torch", "diffusers", "transformers", "peft"}
    tiny = running["presets"]["tiny"]
    assert tiny["base"] == {"source": "builtin", "base": "builtin:tiny", "revision": None, "folder": "tiny",
                            "fingerprint": provenance.fingerprint(models_dir / "tiny")}
    assert tiny["loras"] == [] and tiny["profile"] == workers[0]["profile"]
    lora_file = api.state.parent / "loras" / "tiny-lightning-4step.safetensors"
    assert running["presets"]["lora4"]["loras"] == [{
        "file": lora_file.name, "repo": None, "revision": None,
        "sha256": hashlib.sha256(lora_file.read_bytes()).hexdigest()}]
    assert "qwen-4step" not in running["presets"]  # its weights are not on this machine
    models = api.http.get("/api/v1/models").json()["models"]
    assert models["tiny"]["running"] == {**tiny, "libraries": running["libraries"], "worker": workers[0]["id"]}
    assert models["qwen-4step"]["running"] is None
    assert models["tiny"]["prompt_template"].startswith("Preserve the person's facial features")
    shown = json.dumps(workers) + json.dumps(models)
    assert str(api.state.parent) not in shown  # no server path reaches a station

    def started_line():
        text = "".join(p.read_text(errors="replace") for p in logs_folder().glob("replica_main_ModelWorker_*.log"))
        return "preset lora4: base " in text and text

    text = wait_for(started_line, timeout=15)
    assert f"sha256 {running['presets']['lora4']['loras'][0]['sha256']}" in text
    assert f"diffusers {running['libraries']['diffusers']}" in text


# --- the output check, with NudeNet's real detector ------------------------------------------------

@pytest.fixture(scope="module")
def policed(deploy):
    """Results are real photos (tests.fakes:PictureEngine); the check withholds faces, in results and uploads."""
    pytest.importorskip("nudenet")
    pytest.importorskip("skimage")
    api = deploy("policed", "/policed", wait_workers=True,
                 worker={"engine": "tests.fakes:PictureEngine", "num_cpus": 0},
                 output_policy={"enabled": True, "labels": ["FACE_FEMALE"], "uploads": True},
                 webhooks={"allowed_hosts": ["127.0.0.1"]})
    yield api
    remove_app("policed")


def _astronaut_png() -> bytes:
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.timeout(240)
def test_a_withheld_result_fails_its_job_keeps_no_file_frees_its_slot_and_says_so(policed, cluster):
    receiver = Receiver(fail_first=0)
    try:
        plain = policed.submit(IMAGE, instruction="make the sky blue", seed=1).json()["job_id"]
        job_id = policed.submit(IMAGE, instruction="show the astronaut", seed=2, webhook_url=receiver.url).json()["job_id"]
        events = read_events(policed, job_id)
        assert events[-1][0] == "failed" and events[-1][1]["error"] == WITHHELD
        status = policed.status(job_id).json()
        assert (status["status"], status["error"], status["result_path"]) == ("failed", WITHHELD, None)
        r = policed.http.get(f"/api/v1/status/{job_id}/result")
        assert r.status_code == 404
        assert not any(job_id[:8] in name for name in _results(policed))
        wait_for(lambda: receiver.requests, timeout=20)
        payload = json.loads(receiver.requests[-1][1])
        assert (payload["job_id"], payload["status"], payload["error"]) == (job_id, "failed", WITHHELD)
        # a picture the detector finds nothing in is stored as usual (here, the upload itself)
        done = policed.wait(plain)
        assert done["status"] == "completed" and done["result_path"] in _results(policed)
        queue = policed.http.get("/api/v1/queue").json()
        assert (queue["queue_size"], queue["processing_count"]) == (0, 0)  # the slot is free again
    finally:
        receiver.close()

    # an upload with the label is refused before it is queued
    jobs = _total_jobs(policed)
    r = policed.submit(_astronaut_png(), instruction="make the sky blue")
    assert (r.status_code, r.json()) == (400, {"detail": "Image refused by the server's upload check: it found "
                                                         "FACE_FEMALE. Send another picture."})
    assert _total_jobs(policed) == jobs
    assert policed.submit(IMAGE, instruction="NSFW!").status_code == 400

    def refusals():
        found = qwen_metrics(cluster["metrics_port"]).get("ray_qwen_policy_refusals", [])
        counts = {s.labels["check"]: s.value for s in found
                  if s.name == "ray_qwen_policy_refusals_total" and s.labels.get("application") == "policed"}
        return all(counts.get(check, 0) >= 1 for check in ("prompt", "upload", "output")) and counts

    deadline = time.monotonic() + 90  # Ray exports metrics every few seconds
    while not refusals():
        assert time.monotonic() < deadline, "refusals not counted in ray_qwen_policy_refusals_total by check"
        time.sleep(2)
