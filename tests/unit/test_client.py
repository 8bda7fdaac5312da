"""The Python client's retry and error rules, against a scripted server (httpx.MockTransport)."""

import base64
import json

import httpx
import pytest
from qwen_edit_client import client as qc

VIEW = {"job_id": "j1", "status": "queued", "position": 1, "created_at": None, "started_at": None,
        "completed_at": None, "result_path": None, "result_seed": None, "error": None, "instruction": "x",
        "model": "tiny"}
SUBMITTED = {"job_id": "j1", "status": "queued", "position": 1, "message": "ok", "estimated_wait_seconds": 2}


def scripted(*answers):
    """A transport answering each request with the next (status, body, headers); records requests."""
    seen, queue = [], list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body, headers = queue.pop(0)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handle), seen


def make(*answers, **kwargs):
    transport, seen = scripted(*answers)
    return qc.Client("http://server", api_key="k", transport=transport, **kwargs), seen


def test_submit_waits_out_a_full_queue_with_the_same_idempotency_key(monkeypatch):
    slept = []
    monkeypatch.setattr(qc.time, "sleep", slept.append)
    full = (429, {"detail": "Queue is full (maximum 10 jobs). Please try again later."}, {"Retry-After": "3"})
    c, seen = make(full, full, (200, SUBMITTED, {}))
    job = c.submit(b"\x89PNG...", "make it blue", seed=7)
    assert job.job_id == "j1" and slept == [3.0, 3.0]
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(keys) == 1 and len(seen) == 3  # one logical submit: one key on every try
    assert all(r.headers["X-API-Key"] == "k" for r in seen)
    assert b'name="seed"' in seen[0].content and b"make it blue" in seen[0].content


def test_a_full_queue_past_wait_for_room_raises_queue_full(monkeypatch):
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)
    c, _ = make((429, {"detail": "Queue is full (maximum 10 jobs). Please try again later."}, {"Retry-After": "5"}))
    with pytest.raises(qc.QueueFull) as err:
        c.submit(b"img", "x", wait_for_room=0)
    assert err.value.status == 429 and err.value.retry_after == 5.0 and "Queue is full" in err.value.detail


def test_unavailable_and_dropped_connections_are_retried_then_reported(monkeypatch):
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)
    c, seen = make((503, {"detail": "The job queue is not reachable right now."}, {}), (200, VIEW, {}))
    assert c.status("j1").status == "queued" and len(seen) == 2

    def refuse(request):
        raise httpx.ConnectError("refused")

    down = qc.Client("http://server", transport=httpx.MockTransport(refuse), retries=2)
    with pytest.raises(qc.ConnectionFailed, match="Cannot reach http://server"):
        down.queue()


@pytest.mark.parametrize("status, cls", [(400, qc.BadRequest), (401, qc.Unauthorized), (404, qc.NotFound),
                                         (409, qc.Conflict), (413, qc.TooLarge), (422, qc.Invalid),
                                         (504, qc.EditTimeout)])
def test_each_error_status_has_its_exception_with_the_servers_sentence(status, cls):
    c, seen = make((status, {"detail": "Here is what to fix."}, {}))
    with pytest.raises(cls) as err:
        c.cancel("j1")
    assert err.value.detail == "Here is what to fix." and err.value.status == status and len(seen) == 1


def test_wait_polls_when_the_events_stream_is_not_there(monkeypatch):
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)
    done = {**VIEW, "status": "completed", "position": None, "result_path": "r.png"}
    c, seen = make((200, b"not an event stream", {"content-type": "text/plain"}), (200, VIEW, {}), (200, done, {}))
    updates = []
    final = c.wait("j1", on_update=updates.append)
    assert final.status == "completed" and [u.status for u in updates] == ["queued", "completed"]
    assert [r.url.path for r in seen] == ["/api/v1/status/j1/events", "/api/v1/status/j1", "/api/v1/status/j1"]


def test_wait_follows_the_events_stream_to_the_end():
    events = "".join(f"event: {name}\ndata: {json.dumps({**VIEW, **extra})}\n\n" for name, extra in [
        ("status", {}), ("status", {"status": "processing", "position": None, "step": 0, "total_steps": 2}),
        ("progress", {"status": "processing", "position": None, "step": 1, "total_steps": 2}),
        ("completed", {"status": "completed", "position": None, "step": 2, "total_steps": 2})])
    c, seen = make((200, (": heartbeat\n\n" + events).encode(), {"content-type": "text/event-stream"}))
    steps = []
    assert c.wait("j1", on_update=lambda v: steps.append((v.status, v.step))).status == "completed"
    assert steps == [("queued", 0), ("processing", 0), ("processing", 1), ("completed", 2)] and len(seen) == 1


def test_wait_hands_preview_events_to_on_preview_and_the_rest_to_on_update():
    jpeg = b"\xff\xd8\xff\xe0 a tiny jpeg"
    preview = {"job_id": "j1", "step": 1, "image": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}
    events = (f"event: status\ndata: {json.dumps({**VIEW, 'status': 'processing', 'position': None})}\n\n"
              f"event: preview\ndata: {json.dumps(preview)}\n\n"
              f"event: completed\ndata: {json.dumps({**VIEW, 'status': 'completed', 'position': None})}\n\n")
    c, _ = make((200, events.encode(), {"content-type": "text/event-stream"}))
    shown, updates = [], []
    done = c.wait("j1", on_update=lambda v: updates.append(v.status), on_preview=lambda *a: shown.append(a))
    assert done.status == "completed" and updates == ["processing", "completed"] and shown == [(1, jpeg)]


def test_edit_raises_job_failed_for_a_failed_job(monkeypatch):
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)
    failed = {**VIEW, "status": "failed", "position": None, "error": "worker lost"}
    c, _ = make((200, SUBMITTED, {}), (404, {"detail": "gone"}, {}), (200, failed, {}))
    with pytest.raises(qc.NotFound):  # the stream's 404 is not swallowed
        c.edit(b"img", "x")
    c, _ = make((200, SUBMITTED, {}), (200, b"", {"content-type": "text/plain"}), (200, failed, {}))
    with pytest.raises(qc.JobFailed, match="worker lost"):
        c.edit(b"img", "x")
