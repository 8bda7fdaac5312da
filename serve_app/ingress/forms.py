"""The checks on what a station sends, in plain Python: no FastAPI, no Ray.

``check_edit`` turns the text fields of a /submit or /edit form into a ``CheckedEdit`` or raises an
``ApiError`` whose sentence says what to fix; the image bytes are checked separately (``images``),
after the queue said it has room. Every refusal is a 4xx, never a 500.
"""

import hashlib
import re
import secrets
from dataclasses import dataclass, field, fields
from typing import Protocol

from ..auth import PRIORITIES
from ..config import Settings
from ..contract.protocol import DEFAULT_WEBHOOK_EVENTS, WEBHOOK_EVENTS
from ..errors import BadRequest, Unprocessable
from ..images import check_size
from ..presets import resolve
from ..prompts import clean
from ..webhooks import check_url

MAX_SEED = 2**64 - 1
MAX_DEADLINE_S = 7 * 86_400  # a week: longer is a typo, not a deadline
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
MAX_IDEMPOTENCY_KEY = 255
# How a text field is named in a sentence.
FIELD_NAMES = {"instruction": "Instruction", "system_prompt": "System prompt"}


class Upload(Protocol):
    """An uploaded file as the HTTP layer hands it over (Starlette's ``UploadFile``)."""

    size: int | None

    async def read(self) -> bytes: ...


@dataclass
class EditFields:
    """A /submit or /edit form as sent: every text field as the station typed it (None: absent)."""

    images: list[Upload]
    instruction: str | None = None
    seed: str | None = None
    system_prompt: str | None = None
    preset: str | None = None
    model: str | None = None  # the older name of ``preset``
    webhook_url: str | None = None
    webhook_events: str | None = None  # comma-separated; the final states when absent
    start_within_seconds: str | None = None
    deadline_seconds: str | None = None
    cancel_after: str | None = None  # the Cancel-After header (Replicate's name for the deadline)
    priority: str | None = None
    previews: str | None = None
    undecodable: frozenset[str] = field(default_factory=frozenset)  # fields whose bytes were not UTF-8


@dataclass(frozen=True)
class CheckedEdit:
    instruction: str
    seed: int
    preset: str | None  # a preset's name; None: the queue's default
    system_prompt: str | None
    webhook_url: str | None
    webhook_events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS
    start_within_seconds: float | None = None
    deadline_seconds: float | None = None
    priority: str | None = None  # one of PRIORITIES; None: the key's
    previews: bool = False


# The form's text fields whose bytes must be UTF-8: every field of EditFields sent in the body (the
# Cancel-After header is not), and /edit's return_image.
CHECKED_TEXT = frozenset({f.name for f in fields(EditFields)} - {"images", "undecodable", "cancel_after"}
                         | {"return_image"})


def parse_priority(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    value = raw.strip().lower()
    if value not in PRIORITIES:
        raise Unprocessable(f"Invalid priority {raw[:20]!r}: send {', '.join(PRIORITIES)}, or leave it out "
                            "for your key's.")
    return value


def parse_seconds(raw: str | None, name: str) -> float | None:
    """A deadline in seconds (``90``, ``2.5``), or a duration as Replicate's Cancel-After header
    spells it (``90s``, ``5m``, ``1h30m``, ``500ms``); None when absent."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise Unprocessable(f"Invalid {name} {raw[:40]!r}: send seconds (90) or a duration (90s, 5m, "
                                "1h30m).") from None
        scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        seconds = sum(float(n) * scale[u] for n, u in parts)
    if not 0 < seconds <= MAX_DEADLINE_S:
        raise Unprocessable(f"Invalid {name} {raw[:40]!r}: it must be more than 0 and at most a week.")
    return seconds


def parse_webhook_events(raw: str | None, webhook_url: str | None) -> tuple[str, ...]:
    """``started,completed`` (commas or spaces) -> the events in their canonical order."""
    if raw is None or not raw.strip():
        return DEFAULT_WEBHOOK_EVENTS
    if not webhook_url:
        raise BadRequest("webhook_events needs a webhook_url: say where to send them.")
    names = [n for n in raw.replace(",", " ").split() if n]
    for name in names:
        if name not in WEBHOOK_EVENTS:
            raise BadRequest(f"Unknown webhook event {name[:40]!r}: choose from {', '.join(WEBHOOK_EVENTS)}.")
    return tuple(e for e in WEBHOOK_EVENTS if e in names)


def parse_seed(raw: str | None) -> int:
    """The seed sent, or a random one when none was."""
    if raw is None or raw.strip() == "":
        return secrets.randbelow(2**32)
    try:
        seed = int(raw.strip())
    except ValueError:
        raise Unprocessable(f"Invalid seed {raw[:40]!r}: send a whole number from 0 to {MAX_SEED}, "
                            "or leave it out for a random one.") from None
    if not 0 <= seed <= MAX_SEED:
        raise Unprocessable(f"Invalid seed {seed}: it must be between 0 and {MAX_SEED}.")
    return seed


def parse_bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise Unprocessable(f"Invalid {name} {raw[:20]!r}: send true or false.")


def check_text(what: str, text: str) -> None:
    """Plain text only: no control characters (newlines and tabs are fine), and no U+FFFD or lone
    surrogates (text that was already broken on its way here)."""
    if any((ord(c) < 32 and c not in "\n\r\t") or c == "\x7f" for c in text):
        raise BadRequest(f"{what} contains control characters; send plain text (newlines and tabs are fine).")
    if any(0xD800 <= ord(c) <= 0xDFFF or c == "\ufffd" for c in text):
        raise BadRequest(f"{what} is not valid UTF-8 text; send it encoded as UTF-8.")


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise BadRequest(f"Invalid Idempotency-Key: use 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters "
                         "(a UUID is a good choice).")
    return key


def check_edit(form: EditFields, settings: Settings) -> CheckedEdit:
    """The form's text fields and the count and declared sizes of its images, checked (in the
    order a station would fix them: missing fields first)."""
    limits = settings.ingress
    broken = sorted(form.undecodable & CHECKED_TEXT)
    if broken:
        raise BadRequest(f"{FIELD_NAMES.get(broken[0], repr(broken[0]))} is not valid UTF-8 text; "
                         "send it encoded as UTF-8.")
    if not form.images:
        raise Unprocessable("Invalid request: 'image' is required: attach the picture as a file field named image.")
    if len(form.images) > settings.max_images:
        raise BadRequest(f"Too many images ({len(form.images)}). A job takes at most {settings.max_images}.")
    if form.instruction is None:
        raise Unprocessable("Invalid request: 'instruction' is required: say what to change in the image.")
    instruction = form.instruction.strip()
    if not instruction:
        raise BadRequest("Instruction is empty: say what to change in the image.")
    check_text("Instruction", instruction)
    if form.system_prompt:
        check_text("System prompt", form.system_prompt)
    if len(instruction) > limits.max_instruction_chars:
        raise BadRequest(f"Instruction too long ({len(instruction)} chars). "
                         f"Maximum {limits.max_instruction_chars} characters.")
    limit = limits.max_system_prompt_chars
    if form.system_prompt is not None and len(form.system_prompt) > limit:
        raise BadRequest(f"System prompt too long ({len(form.system_prompt)} chars). Maximum {limit} characters.")
    if not clean(instruction):  # only quotes: nothing would reach the model
        raise BadRequest("Instruction is empty: say what to change in the image.")
    limits.prompt_policy.check(instruction, form.system_prompt)  # before the queue, before the image is read
    preset = None
    if form.preset or form.model:
        chosen = [resolve(settings.presets, n).name for n in (form.preset, form.model) if n]
        if len(set(chosen)) > 1:
            raise BadRequest(f"preset ({form.preset}) and model ({form.model}) name different presets; "
                             "send only preset.")
        preset = chosen[0]
    webhook_url = check_url(form.webhook_url, limits.webhook_allowed_hosts) if form.webhook_url else None
    webhook_events = parse_webhook_events(form.webhook_events, webhook_url)
    seed = parse_seed(form.seed)  # before the fingerprint: a bad seed is a 422, not a new key use
    start_within = parse_seconds(form.start_within_seconds, "start_within_seconds")
    deadline = parse_seconds(form.deadline_seconds, "deadline_seconds")
    header = parse_seconds(form.cancel_after, "Cancel-After header")
    if deadline is not None and header is not None and deadline != header:
        raise BadRequest(f"deadline_seconds ({deadline:g}) and the Cancel-After header ({header:g}s) differ; "
                         "send one of them.")
    deadline = deadline if deadline is not None else header
    priority = parse_priority(form.priority)
    previews = parse_bool(form.previews, "previews", False)
    for f in form.images:  # the parser spooled each file to disk: refuse an oversize one unread
        if f.size is not None:
            check_size(f.size, limits.upload_limits)
    return CheckedEdit(instruction, seed, preset, form.system_prompt or None, webhook_url, webhook_events,
                       start_within, deadline, priority, previews)


def fingerprint(images: list[bytes], form: EditFields, checked: CheckedEdit) -> str:
    """What makes two requests 'the same' for an Idempotency-Key: every field as sent."""
    h = hashlib.sha256()
    for data in images:
        h.update(hashlib.sha256(data).digest())
    for value in (checked.instruction, form.seed, form.preset, form.model, form.system_prompt, checked.webhook_url,
                  ",".join(checked.webhook_events), f"{checked.start_within_seconds}", f"{checked.deadline_seconds}",
                  checked.priority, str(checked.previews)):
        h.update(b"\x00" + (value or "").strip().encode("utf-8", "surrogatepass"))
    return h.hexdigest()
