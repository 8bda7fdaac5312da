"""The queue's faces (``contract.faces``) hold the queue and its clients together: the queue has every
call of each face with the face's signature, each client has its face's calls with the same
parameters (and only optional keyword-only ones beside), and every call the queue serves is on a
face. So a queue method renamed, re-typed or added without its client fails here, not at run time."""

import inspect
import typing

import pytest

from serve_app.contract import queue_client
from serve_app.contract.faces import FACES, IngressFace, OperatorFace, WorkerFace
from serve_app.queue.actor import QueueActor

QUEUE = getattr(QueueActor, "func_or_class", QueueActor)
CLIENTS = {IngressFace: queue_client.IngressQueue, WorkerFace: queue_client.WorkerQueue,
           OperatorFace: queue_client.OperatorQueue}


def calls(face) -> list[str]:
    return [name for name, value in vars(face).items() if inspect.iscoroutinefunction(value)]


def shape(fn):
    """Each parameter's (name, kind, default, type), and the return type; ``self`` left out."""
    hints = typing.get_type_hints(inspect.unwrap(fn))
    params = [(p.name, p.kind, p.default, hints.get(p.name)) for p in inspect.signature(fn).parameters.values()]
    return params[1:], hints.get("return")


@pytest.mark.parametrize("face", FACES, ids=lambda f: f.__name__)
def test_the_queue_serves_each_call_of_the_face_with_its_signature(face):
    for name in calls(face):
        assert inspect.iscoroutinefunction(getattr(QUEUE, name, None)), name
        assert shape(getattr(QUEUE, name))[0] == shape(getattr(face, name))[0], name


@pytest.mark.parametrize("face", FACES, ids=lambda f: f.__name__)
def test_each_client_has_its_face_with_the_same_parameters_and_answers(face):
    client = CLIENTS[face]
    assert set(calls(client)) - {"_ask"} == set(calls(face))
    for name in calls(face):
        (theirs, answer), (ours, our_answer) = shape(getattr(face, name)), shape(getattr(client, name))
        assert ours[:len(theirs)] == theirs and our_answer == answer, name
        extra = ours[len(theirs):]
        assert all(kind is inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty
                   for _, kind, default, _ in extra), name


def test_every_call_the_queue_serves_is_on_a_face():
    served = {name for name in dir(QUEUE)
              if not name.startswith("_") and inspect.iscoroutinefunction(getattr(QUEUE, name))}
    assert served == {name for face in FACES for name in calls(face)}
