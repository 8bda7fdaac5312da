"""What the model is asked, and which prompts are refused: plain Python, no torch, no Ray.

The stations edit portraits of people, and the deployment they used before asked the model a fixed
thing around every instruction. ``render`` reproduces it exactly with the default template:

    Preserve the person's facial features, identity, and likeness exactly. {system_prompt} {instruction}

each part first stripped of surrounding spaces and then of ``"`` and ``'`` at either end; without a
system prompt, the sentence, one space, the instruction. A preset may name its own template
(``prompt_template`` in config/serve.yaml) with the same two placeholders.

``PromptPolicy`` is the earlier deployment's prompt filter, with its list and its sentence: a term
matches where it stands between the text's ends or characters other than ASCII letters and digits,
case-insensitively (``Topless,`` and ``NSFW!`` match; ``fakes`` and ``nudes`` do not). Beyond it,
the text is compared after Unicode NFKC and case folding, so full-width letters (``ｎｕｄｅ``) and
ligatures do not slip past.
"""

import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property

from .errors import BadRequest

DEFAULT_PROMPT_TEMPLATE = ("Preserve the person's facial features, identity, and likeness exactly. "
                           "{system_prompt} {instruction}")
DEFAULT_NEGATIVE_PROMPT = ("distorted face, disfigured face, ugly face, deformed face, bad anatomy, extra limbs, "
                           "missing limbs, blurry, low quality, watermark, text, signature")
DEFAULT_BLOCKED_TERMS = ("nude", "naked", "topless", "nsfw", "deepfake", "fake")
PLACEHOLDERS = ("{system_prompt}", "{instruction}")
_FIELD = re.compile(r"\{[^{}]*\}")


def clean(text: str | None) -> str:
    """A station's text as the earlier deployment put it into the prompt: surrounding spaces, then
    quotes at either end, removed."""
    return (text or "").strip().strip("\"'")


def template_problem(template: str) -> str | None:
    """None for a usable template, else what is wrong with it (for the config's error message)."""
    for placeholder in PLACEHOLDERS:
        if template.count(placeholder) != 1:
            return f"it must contain {placeholder} exactly once"
    unknown = sorted(set(_FIELD.findall(template)) - set(PLACEHOLDERS))
    if unknown:
        return f"{unknown[0]} is not a placeholder (use {{system_prompt}} and {{instruction}})"
    return None


def render(template: str, instruction: str, system_prompt: str | None = None) -> str:
    """The prompt the pipeline receives. An empty system prompt is left out together with the
    whitespace before it (after it, where it opens the template), so no double space is left."""
    system = clean(system_prompt)
    if system:
        text = template.replace("{system_prompt}", system)
    elif re.match(r"\s*\{system_prompt\}", template):
        text = re.sub(r"^\s*\{system_prompt\}\s*", "", template, count=1)
    else:
        text = re.sub(r"\s*\{system_prompt\}", "", template, count=1)
    return text.replace("{instruction}", clean(instruction))


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


class PromptRefused(BadRequest):
    """An instruction or system prompt with a blocked term; ``terms`` are the ones found."""

    def __init__(self, terms: list[str]):
        super().__init__(f"Prompt contains disallowed term(s): {', '.join(terms)}. Please revise and try again.")
        self.terms = terms


@dataclass(frozen=True)
class PromptPolicy:
    enabled: bool = True
    blocked_terms: tuple[str, ...] = DEFAULT_BLOCKED_TERMS

    @cached_property
    def _patterns(self) -> list[tuple[str, re.Pattern]]:
        return [(term, re.compile(rf"(?<![a-z0-9]){re.escape(_folded(term))}(?![a-z0-9])"))
                for term in self.blocked_terms if term.strip()]

    def found(self, *texts: str | None) -> list[str]:
        """The blocked terms in any of ``texts``, sorted, each once (as the config spells them)."""
        if not self.enabled:
            return []
        folded = [_folded(t) for t in texts if t]
        return sorted({term for term, pattern in self._patterns if any(pattern.search(t) for t in folded)})

    def check(self, instruction: str | None, system_prompt: str | None) -> None:
        """Raise ``PromptRefused`` (400, the earlier deployment's sentence) when a term is found."""
        terms = self.found(instruction, system_prompt)
        if terms:
            raise PromptRefused(terms)
