"""Log lines: each module's lines reach its replica's Serve log, and every line about a job carries
the job's whole id as a field when the replicas log as JSON."""

import json

import pytest

from serve_app.logs import JOB_ID
from tests.helpers import IMAGE, logs_folder, remove_app, wait_for


def serve_log_records(job_id: str) -> list[dict]:
    records = []
    for path in logs_folder().glob("replica_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get(JOB_ID) == job_id:
                records.append(record)
    return records


@pytest.fixture(scope="module")
def api(deploy):
    # the app's logging_config, as the YAML's would be: the queue's own code must not override it
    yield deploy("logs", "/logs", wait_workers=True, logging_config={"encoding": "JSON"}, worker={"num_cpus": 0})
    remove_app("logs")


def test_a_jobs_lines_carry_its_id_in_the_replica_logs(api):
    job_id = api.submit(IMAGE).json()["job_id"]
    assert api.wait(job_id)["status"] == "completed"
    wait_for(lambda: len(serve_log_records(job_id)) >= 3, timeout=15)
    records = serve_log_records(job_id)
    messages = [r["message"] for r in records]
    for event in ("submitted", "Processing job", "completed in"):
        assert any(event in m for m in messages), (event, messages)
    assert all(job_id[:8] in m for m in messages)
    assert {r["deployment"] for r in records} == {"logs_QueueActor"}, records  # Serve names app_deployment
    queue_log = next(logs_folder().glob("replica_logs_QueueActor_*.log")).read_text()
    assert "next_task" not in queue_log  # the workers' long polls are not logged, one line per call


def test_refusals_are_answers_not_failures_in_the_queue_log(api):
    """A 404 (or a full queue's 429) is the queue's answer: no "Request failed" with a traceback."""
    assert api.status("no-such-job").status_code == 404
    assert api.http.delete("/api/v1/status/no-such-job").status_code == 404
    assert api.http.get("/api/v1/status/no-such-job/result").status_code == 404
    queue_log = next(logs_folder().glob("replica_logs_QueueActor_*.log")).read_text()
    assert "Request failed" not in queue_log and "Traceback" not in queue_log
