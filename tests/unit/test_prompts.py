"""Issue 23: what the model is asked (the earlier deployment's prompt and negative prompt, exactly) and
which prompts are refused (its filter, its sentence, and NFKC folding beyond it)."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import AppArgs, build_settings
from serve_app.errors import BadRequest
from serve_app.ingress.forms import EditFields, check_edit
from serve_app.presets import build_registry
from serve_app.prompts import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT_TEMPLATE, PromptPolicy, PromptRefused, render
from tests.helpers import ROOT, photo

FACES = "Preserve the person's facial features, identity, and likeness exactly."
EARLIER_NEGATIVE = ("distorted face, disfigured face, ugly face, deformed face, bad anatomy, extra limbs, "
                    "missing limbs, blurry, low quality, watermark, text, signature")


# --- the template -----------------------------------------------------------------------------------

@pytest.mark.parametrize("instruction, system, expected", [
    ("make the sky blue", None, f"{FACES} make the sky blue"),
    ("make the sky blue", "", f"{FACES} make the sky blue"),
    ("make the sky blue", "   ", f"{FACES} make the sky blue"),
    ('  "make the sky blue"  ', None, f"{FACES} make the sky blue"),
    ("'make the sky blue'", " \"You retouch portraits.\" ", f"{FACES} You retouch portraits. make the sky blue"),
    ("it's \"done\"", "Keep it real.", f"{FACES} Keep it real. it's \"done"),
])
def test_the_default_template_is_the_earlier_prompt(instruction, system, expected):
    assert render(DEFAULT_PROMPT_TEMPLATE, instruction, system) == expected


def test_a_template_of_the_operator_fills_both_placeholders_and_drops_an_empty_system_prompt():
    template = "{system_prompt}\n{instruction}"
    assert render(template, "make it red", "Be subtle.") == "Be subtle.\nmake it red"
    assert render(template, "make it red", None) == "make it red"
    assert render("Edit: {instruction} ({system_prompt})", "x", None) == "Edit: x ()"
    # an empty system prompt takes the whitespace before it along, nothing else
    assert render("A {system_prompt} B {instruction}", "x", None) == "A B x"


def test_the_real_presets_ask_the_earlier_prompt_and_the_40_step_preset_its_negative_prompt():
    defaults = build_registry(None)
    for name in ("qwen-4step", "qwen-8step", "qwen-40step", "tiny"):
        assert defaults[name].prompt_template == DEFAULT_PROMPT_TEMPLATE
    assert defaults["qwen-40step"].negative_prompt == EARLIER_NEGATIVE == DEFAULT_NEGATIVE_PROMPT
    for config in ("serve.gpu.yaml", "serve.24gb.yaml", "serve.24gb-gguf.yaml"):
        args = yaml.safe_load((ROOT / "config" / config).read_text())["applications"][0]["args"]
        presets = build_registry(args.get("presets"))
        for name in ("qwen-4step", "qwen-8step", "qwen-40step"):
            assert presets[name].prompt_template == DEFAULT_PROMPT_TEMPLATE, (config, name)
        assert presets["qwen-40step"].negative_prompt == EARLIER_NEGATIVE, config
        assert presets["qwen-40step"].public()["negative_prompt"] == EARLIER_NEGATIVE
        assert presets["qwen-4step"].public()["negative_prompt"] is None  # no CFG: none is used


@pytest.mark.parametrize("template, problem", [
    ("{system_prompt} only", "{instruction} exactly once"),
    ("{instruction}", "{system_prompt} exactly once"),
    ("{system_prompt} {instruction} {instruction}", "{instruction} exactly once"),
    ("{system_prompt} {instruction} for {station}", "{station} is not a placeholder"),
])
def test_a_template_without_its_placeholders_is_refused_at_start(template, problem):
    with pytest.raises(ValidationError, match=problem):
        build_registry({"tiny": {"prompt_template": template}})


class _Spy:
    """The pipeline, recording what it is called with."""

    def __init__(self, pipe):
        self._pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self._pipe(**kwargs)

    def __getattr__(self, name):
        return getattr(self._pipe, name)


def test_the_pipeline_receives_the_exact_prompt_and_negative_prompt(engine):
    presets = build_registry({"tiny": {"resolution": 64, "steps": 1},
                              "cfg": {"base": "builtin:tiny", "resolution": 64, "steps": 1, "cfg_scale": 4.0,
                                      "nominal_seconds": 1}})
    image = photo(64, 64)
    sent = {}
    for name in ("tiny", "cfg"):
        engine.ensure(presets[name])
        spy = engine.pipe = _Spy(engine.pipe)
        try:
            engine.run(presets[name], image, '"make the sky blue"', seed=1, system_prompt="'Retouch gently.'")
            engine.run(presets[name], image, "make it snow", seed=1)
        finally:
            engine.pipe = spy._pipe
        sent[name] = [(c["prompt"], c["negative_prompt"], c["true_cfg_scale"]) for c in spy.calls]
    assert sent["tiny"] == [(f"{FACES} Retouch gently. make the sky blue", None, 1.0),
                            (f"{FACES} make it snow", None, 1.0)]
    assert sent["cfg"] == [(f"{FACES} Retouch gently. make the sky blue", EARLIER_NEGATIVE, 4.0),
                           (f"{FACES} make it snow", EARLIER_NEGATIVE, 4.0)]


def test_prepared_ahead_the_prompt_is_the_same(engine):
    preset = build_registry({"tiny": {"resolution": 64, "steps": 1}})["tiny"]
    engine.ensure(preset)
    prepared = engine.prepare(preset, [photo(64, 64)], "'make it red'", "Be subtle.")
    assert prepared.prompt == f"{FACES} Be subtle. make it red"


# --- the prompt policy ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, found", [
    ("make her Topless, please", ["topless"]),
    ("NSFW!", ["nsfw"]),
    ("a FAKE nude beach", ["fake", "nude"]),
    ("nude", ["nude"]),
    ("(naked)", ["naked"]),
    ("deepfake-style", ["deepfake"]),
    ("ｎｕｄｅ", ["nude"]),  # full-width letters, folded by NFKC
    ("ＮＳＦＷ", ["nsfw"]),
    ("nude_portrait", ["nude"]),  # _ is neither an ASCII letter nor a digit
    ("fakes and nudes", []),  # as the earlier filter: a term inside a word does not match
    ("nude2", []),
    ("denuded hillside", []),
    ("make the sky blue", []),
])
def test_blocked_terms_match_as_the_earlier_filter_and_after_nfkc(text, found):
    assert PromptPolicy().found(text) == found


def test_a_ligature_and_case_folding_do_not_slip_past():
    assert PromptPolicy(blocked_terms=("fire",)).found("ﬁre") == ["fire"]  # U+FB01, the fi ligature
    assert PromptPolicy(blocked_terms=("strasse",)).found("STRAẞE") == ["strasse"]


def test_the_refusal_is_the_earlier_sentence_naming_the_terms_sorted():
    with pytest.raises(PromptRefused) as caught:
        PromptPolicy().check("make a nude", "it is fake")
    assert caught.value.status_code == 400
    assert caught.value.detail == "Prompt contains disallowed term(s): fake, nude. Please revise and try again."


def test_off_or_replaced_the_policy_refuses_what_the_config_says():
    assert PromptPolicy(enabled=False).found("nude") == []
    assert PromptPolicy(blocked_terms=()).found("nude") == []
    assert PromptPolicy(blocked_terms=("Sky",)).found("make the SKY blue", "nude") == ["Sky"]


def _settings(tmp_path: Path, **args):
    return build_settings({"state_dir": str(tmp_path), "rate_limit": None, **args})


def _form(instruction, system_prompt=None):
    return EditFields([_Upload()], instruction, system_prompt=system_prompt)


class _Upload:
    size = 10

    async def read(self):
        raise AssertionError("the image is not read for a refused prompt")


def test_submit_and_edit_refuse_before_anything_else_is_done(tmp_path):
    settings = _settings(tmp_path)
    with pytest.raises(PromptRefused, match=r"^Prompt contains disallowed term\(s\): nude\. Please revise"):
        check_edit(_form("make it nude"), settings)
    with pytest.raises(PromptRefused, match=r"term\(s\): nsfw\."):
        check_edit(_form("make the sky blue", system_prompt="you do NSFW!"), settings)
    assert check_edit(_form("make the sky blue"), settings).instruction == "make the sky blue"
    off = _settings(tmp_path, prompt_policy={"enabled": False})
    assert check_edit(_form("make it nude"), off).instruction == "make it nude"
    replaced = _settings(tmp_path, prompt_policy={"blocked_terms": ["snow"]})
    assert check_edit(_form("make it nude"), replaced).instruction == "make it nude"
    with pytest.raises(PromptRefused, match="snow"):
        check_edit(_form("make it Snow."), replaced)


def test_an_instruction_of_quotes_only_is_empty(tmp_path):
    with pytest.raises(BadRequest, match="Instruction is empty"):
        check_edit(_form('""'), _settings(tmp_path))


@pytest.mark.parametrize("policy, message", [
    ({"enable": True}, "enable"),
    ({"blocked_terms": ["ok", "  "]}, "must be 1 to 200 characters"),
    ({"blocked_terms": "nude"}, "valid list"),
    ({"enabled": "sometimes"}, "valid boolean"),
])
def test_wrong_prompt_policy_keys_are_refused(policy, message):
    with pytest.raises(ValidationError, match=message):
        AppArgs.model_validate({"prompt_policy": policy})
