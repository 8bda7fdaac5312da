"""The client's own definitions of the server's answers (clients/python/qwen_edit_client/models.py)
name exactly the fields the server's response models (serve_app/ingress/schemas.py) do, with the same
status values: the two distributions cannot drift apart unnoticed."""

import pytest
import qwen_edit_client.models as client
from pydantic import BaseModel

import serve_app.ingress.schemas as server
from serve_app.contract.protocol import JobStatus

PAIRS = ["SubmitResponse", "JobStatusResponse", "JobListResponse", "QueueResponse", "WorkerView", "HealthResponse",
         "PresetView", "ModelsResponse"]


@pytest.mark.parametrize("name", PAIRS)
def test_the_client_reads_every_field_the_server_sends(name):
    theirs: type[BaseModel] = getattr(server, name)
    ours: type[BaseModel] = getattr(client, name)
    assert set(ours.model_fields) == set(theirs.model_fields), name


def test_statuses_and_the_final_ones_are_the_servers():
    assert [s.value for s in client.JobStatus] == [s.value for s in JobStatus]
    assert {s.value for s in client.TERMINAL} == {s.value for s in JobStatus if s.terminal}


def test_the_servers_examples_parse_and_unknown_fields_are_kept():
    for name in PAIRS:
        for example in getattr(server, name).model_config.get("json_schema_extra", {}).get("examples", []):
            getattr(client, name).model_validate(example)
    view = client.JobStatusResponse.model_validate({"job_id": "j", "status": "queued", "from_the_future": 1})
    assert view.model_extra == {"from_the_future": 1} and view.priority == "normal"
