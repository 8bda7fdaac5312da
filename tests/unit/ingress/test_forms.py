"""Request validation (``serve_app.ingress.forms``): every refusal is a 4xx with a sentence that says what to fix."""

import pytest

from serve_app.config import build_settings
from serve_app.errors import BadRequest, Unprocessable
from serve_app.ingress.forms import (MAX_SEED, EditFields, check_edit, check_idempotency_key, fingerprint, parse_bool,
                                     parse_seed)


class Upload:
    def __init__(self, data: bytes = b"png", size: int | None = None):
        self.data, self.size = data, len(data) if size is None else size

    async def read(self) -> bytes:
        return self.data


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return build_settings({"state_dir": str(tmp_path_factory.mktemp("state")), "max_instruction_chars": 20,
                           "max_system_prompt_chars": 10, "webhooks": {"allowed_hosts": ["hooks.example"]}})


def form(**over) -> EditFields:
    return EditFields(**{"images": [Upload()], "instruction": "make it blue", **over})


@pytest.mark.parametrize("over, error, says", [
    ({"images": []}, Unprocessable, "'image' is required"),
    ({"images": [Upload()] * 4}, BadRequest, "Too many images (4). A job takes at most 3."),
    ({"instruction": None}, Unprocessable, "'instruction' is required"),
    ({"instruction": "   "}, BadRequest, "Instruction is empty"),
    ({"instruction": "x" * 21}, BadRequest, "Instruction too long (21 chars). Maximum 20 characters."),
    ({"instruction": "ring \x07"}, BadRequest, "Instruction contains control characters"),
    ({"instruction": "bad \ufffd"}, BadRequest, "Instruction is not valid UTF-8 text"),
    ({"system_prompt": "x" * 11}, BadRequest, "System prompt too long (11 chars). Maximum 10 characters."),
    ({"undecodable": frozenset({"instruction"})}, BadRequest, "Instruction is not valid UTF-8 text"),
    ({"undecodable": frozenset({"seed"})}, BadRequest, "'seed' is not valid UTF-8 text"),
    ({"preset": "qwen-4step", "model": "qwen-8step"}, BadRequest, "name different presets"),
    ({"preset": "nope"}, BadRequest, "nope"),
    ({"seed": "1.5"}, Unprocessable, "Invalid seed '1.5'"),
    ({"seed": str(MAX_SEED + 1)}, Unprocessable, f"between 0 and {MAX_SEED}"),
    ({"webhook_url": "https://evil.example/x"}, BadRequest, "evil.example"),
    ({"webhook_url": "https://hooks.example/x", "webhook_events": "started,finished"}, BadRequest,
     "Unknown webhook event 'finished': choose from started, completed, failed, cancelled."),
    ({"webhook_events": "started"}, BadRequest, "webhook_events needs a webhook_url"),
    ({"priority": "urgent"}, Unprocessable, "Invalid priority 'urgent': send low, normal, high"),
    ({"images": [Upload(size=11 * 2**20)]}, BadRequest, "Image too large (11.0MB). Maximum 10MB allowed."),
])
def test_each_refusal_names_what_to_fix(settings, over, error, says):
    with pytest.raises(error) as caught:
        check_edit(form(**over), settings)
    assert says in caught.value.detail


def test_a_good_form_is_normalised(settings):
    checked = check_edit(form(instruction="  make it blue\n", seed=" 42 ", model="4-step", system_prompt=""),
                         settings)
    assert (checked.instruction, checked.seed, checked.preset, checked.system_prompt) == (
        "make it blue", 42, "qwen-4step", None)
    assert 0 <= check_edit(form(), settings).seed < 2**32  # random when left out
    assert check_edit(form(priority=" High "), settings).priority == "high"
    assert check_edit(form(), settings).priority is None  # the key's
    undecodable_unknown = form(undecodable=frozenset({"f7"}))  # fields nobody reads are not checked
    assert check_edit(undecodable_unknown, settings).instruction == "make it blue"


def test_fingerprint_changes_with_any_field_and_with_the_images(settings):
    base = form(seed="1")
    key = fingerprint([b"a"], base, check_edit(base, settings))
    for other, images in [(form(seed="2"), [b"a"]), (form(seed="1", instruction="other"), [b"a"]),
                          (form(seed="1"), [b"b"]), (form(seed="1", preset="qwen-4step"), [b"a"]),
                          (form(seed="1", priority="low"), [b"a"])]:
        assert fingerprint(images, other, check_edit(other, settings)) != key
    assert fingerprint([b"a"], form(seed="1"), check_edit(form(seed="1"), settings)) == key


def test_idempotency_keys_and_booleans():
    assert check_idempotency_key(None) is None and check_idempotency_key("k-1") == "k-1"
    for bad in ("", "x" * 256, "ключ", "a\nb"):
        with pytest.raises(BadRequest, match="Idempotency-Key"):
            check_idempotency_key(bad)
    assert parse_bool(None, "return_image", True) and not parse_bool(" off ", "return_image", True)
    with pytest.raises(Unprocessable, match="send true or false"):
        parse_bool("maybe", "return_image", True)
    assert parse_seed("0") == 0


def test_webhook_events_are_chosen_by_name_in_any_order(settings):
    url = "https://hooks.example/x"
    assert check_edit(form(webhook_url=url), settings).webhook_events == ("completed", "failed", "cancelled")
    chosen = check_edit(form(webhook_url=url, webhook_events=" completed, started "), settings).webhook_events
    assert chosen == ("started", "completed")
    a = form(webhook_url=url, webhook_events="started")
    b = form(webhook_url=url)
    assert fingerprint([b"a"], a, check_edit(a, settings)) != fingerprint([b"a"], b, check_edit(b, settings))


@pytest.mark.parametrize("raw, seconds", [("90", 90), ("2.5", 2.5), ("90s", 90), ("5m", 300), ("1h30m", 5400),
                                          ("500ms", 0.5), (" 1m30s ", 90), (None, None), ("", None)])
def test_deadlines_in_seconds_or_as_durations(raw, seconds):
    from serve_app.ingress.forms import parse_seconds

    assert parse_seconds(raw, "deadline_seconds") == seconds


@pytest.mark.parametrize("over, says", [
    ({"deadline_seconds": "soon"}, "Invalid deadline_seconds 'soon': send seconds (90) or a duration"),
    ({"start_within_seconds": "0"}, "more than 0 and at most a week"),
    ({"deadline_seconds": "9999999"}, "at most a week"),
    ({"deadline_seconds": "60", "cancel_after": "2m"}, "deadline_seconds (60) and the Cancel-After header (120s) differ"),
])
def test_deadline_refusals(settings, over, says):
    with pytest.raises((BadRequest, Unprocessable)) as caught:
        check_edit(form(**over), settings)
    assert says in caught.value.detail


def test_the_cancel_after_header_is_the_deadline(settings):
    checked = check_edit(form(cancel_after="1m", start_within_seconds="20"), settings)
    assert (checked.deadline_seconds, checked.start_within_seconds) == (60, 20)
