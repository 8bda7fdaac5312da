"""Profiles: what each device can run, auto's choice on fake cards, the memory plan and --plan."""

import re
from pathlib import Path

import pytest
import yaml

from serve_app.launcher import main
from serve_app.presets import build_registry
from serve_app.profiles import PROFILES, DeviceInfo, GiB, choose, missing, usable
from serve_app.worker import memplan

ROOT = Path(__file__).resolve().parents[2]
BOTH = frozenset({"torchao", "bitsandbytes"})
REGISTRY = build_registry({})
REAL = [REGISTRY[n] for n in ("qwen-4step", "qwen-8step", "qwen-40step")]


def card(gib: float, capability=(9, 0), name="card", backends=BOTH) -> DeviceInfo:
    return DeviceInfo("cuda", name, capability, int(gib * GiB), int(gib * GiB), backends=backends)


def need(profile):
    return max(memplan.plan(p, profile).peak for p in REAL)


@pytest.mark.parametrize("device, expected", [
    (card(139.8, (9, 0), "H200"), "fp8"),
    (card(79.2, (8, 0), "A100 80GB"), "bf16"),  # no FP8 tensor cores
    (card(47.5, (8, 6), "A6000"), "int8"),
    (card(31.4, (12, 0), "RTX 5090"), "fp8-lite"),
    (card(23.6, (8, 9), "RTX 4090"), "nf4"),
    (card(19.6, (8, 9), "RTX 4000 Ada"), "nf4-lean"),
    (card(15.6, (8, 9), "RTX 4060 Ti"), "nf4-offload"),
    (card(23.6, (8, 9), "RTX 4090", backends=frozenset({"torchao"})), "bf16-stream"),  # no bitsandbytes
])
def test_auto_picks_the_fastest_profile_that_fits(device, expected):
    profile, reason = choose(device, need)
    assert profile.name == expected, reason
    assert reason.startswith(f"auto: {expected} needs ") and device.name in reason
    assert need(profile) <= usable(device.free)


def test_auto_says_when_nothing_fits_and_on_a_cpu():
    profile, reason = choose(card(4, (8, 9), "tiny card"), need)
    assert profile is None
    assert "no profile fits the 4.0 GiB free on tiny card" in reason and "bf16-stream: needs" in reason
    profile, reason = choose(DeviceInfo("cpu", backends=BOTH), need)
    assert profile.name == "bf16" and "CPU" in reason


def test_profiles_a_device_cannot_run_are_named_with_what_is_missing():
    cpu = DeviceInfo("cpu", backends=BOTH)
    fp8 = missing(PROFILES["fp8"], cpu)
    assert fp8.startswith("Profile fp8 needs FP8 tensor cores") and "no GPU" in fp8
    assert "compute capability 8.0" in missing(PROFILES["fp8"], card(80, (8, 0), "A100"))
    assert missing(PROFILES["nf4"], cpu).startswith("Profile nf4 needs a CUDA GPU (4-bit bitsandbytes weights)")
    assert "offloading to host memory" in missing(PROFILES["bf16-stream"], cpu)
    no_bnb = missing(PROFILES["nf4"], card(24, backends=frozenset({"torchao"})))
    assert no_bnb == ("Profile nf4 needs the bitsandbytes package for its nf4 weights, which is not installed "
                      "on this worker (pip install bitsandbytes).")
    assert missing(PROFILES["int8"], cpu) is None and missing(PROFILES["bf16"], cpu) is None
    assert all(missing(p, card(141)) is None for p in PROFILES.values())


def test_plan_counts_the_published_model():
    plan = memplan.plan(REGISTRY["qwen-40step"], PROFILES["bf16"])
    # 20.4 B transformer and 8.3 B text encoder parameters in bf16: 40.9 GB and 16.6 GB
    assert 40.5e9 < plan.weights["transformer"] < 41.3e9
    assert 16.3e9 < plan.weights["text_encoder"] < 16.9e9
    assert plan.lora == 0 and plan.peak_stage == "vae_decode"
    nf4 = memplan.plan(REGISTRY["qwen-4step"], PROFILES["nf4"])
    assert nf4.weights["transformer"] < 0.27 * plan.weights["transformer"]
    assert 0.8 * GiB < nf4.lora < 1.3 * GiB  # the rank-64 Lightning adapter stays on the GPU
    fused = memplan.plan(REGISTRY["qwen-4step"], PROFILES["bf16"])
    assert fused.lora == 0 and fused.host > 38 * GiB  # fused: base copies in host memory instead
    arch = memplan.architecture(None, 1024, 3, False)
    assert arch.activations["vae_decode"] > 2 * GiB  # the untiled decode at 1024x1024 ...
    tiled = memplan.architecture(None, 1024, 3, True)
    assert tiled.activations["vae_decode"] < arch.activations["vae_decode"] / 4  # ... is what tiling saves


def test_plan_uses_the_presets_own_configs_when_they_are_here(tmp_path):
    from serve_app.worker.tiny_model import ensure_tiny_model

    folder = ensure_tiny_model(tmp_path / "tiny")
    plan = memplan.plan(REGISTRY["tiny"], PROFILES["int8"], folder=str(folder))
    assert plan.source == "config files of tiny" and plan.peak < 64 * 1024 ** 2


def _plan_output(capsys, config: Path) -> tuple[int, list[str]]:
    code = main(["--plan", str(config)])
    return code, capsys.readouterr().out.strip().splitlines()


def test_plan_of_the_24gb_config_fits_22_gib(capsys):
    code, lines = _plan_output(capsys, ROOT / "config" / "serve.24gb.yaml")
    assert code == 0
    peak = float(re.fullmatch(r"plan: ([\d.]+) GiB peak", lines[-1]).group(1))
    assert peak <= 22.0
    for name in ("qwen-4step", "qwen-8step", "qwen-40step"):
        assert any(line.startswith(f"{name}: profile nf4 (worker.profile)") for line in lines)
        assert any(re.match(rf"{name}\s+nf4\s", line) for line in lines)  # a row of the table
    assert "every preset fits the card" in lines[-2]


def test_plan_of_the_other_configs_and_a_card_too_small(capsys, tmp_path):
    for name in ("serve.yaml", "serve.gpu.yaml", "serve.cluster.yaml"):
        code, lines = _plan_output(capsys, ROOT / "config" / name)
        assert code == 0 and re.fullmatch(r"plan: [\d.]+ GiB peak", lines[-1])
    config = yaml.safe_load((ROOT / "config" / "serve.24gb.yaml").read_text())
    config["applications"][0]["args"]["worker"]["profile"] = "bf16"
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config))
    code, lines = _plan_output(capsys, small)
    assert code == 1 and "does not fit the card: qwen-4step, qwen-8step, qwen-40step" in lines[-2]
    config["applications"][0]["args"]["worker"]["profile"] = "auto"  # auto on the named card size
    small.write_text(yaml.safe_dump(config))
    code, lines = _plan_output(capsys, small)
    assert code == 0 and any(line.startswith("qwen-4step: profile nf4 (auto)") for line in lines)


def test_plan_of_the_24gb_gguf_config_fits_22_gib_with_the_q4_k_m_transformer(capsys, tmp_path):
    code, lines = _plan_output(capsys, ROOT / "config" / "serve.24gb-gguf.yaml")
    assert code == 0 and "every preset fits the card" in lines[-2], lines
    assert float(re.fullmatch(r"plan: ([\d.]+) GiB peak", lines[-1]).group(1)) <= 22.0
    for name in ("qwen-4step", "qwen-8step", "qwen-40step"):
        assert (f"{name}: profile nf4 (worker.profile): transformer GGUF Q4_K_M (type from the file's name), "
                "text encoder nf4, VAE tiling") in lines
    # 20.4 B weights at Q4_K_M's 5.13 bits: the published file's 13.1 GB (12.2 GiB)
    assert any(re.match(r"qwen-4step\s+nf4\s+12\.2\s", line) for line in lines)
    config = yaml.safe_load((ROOT / "config" / "serve.24gb-gguf.yaml").read_text())
    for preset in config["applications"][0]["args"]["presets"].values():
        preset["transformer_gguf"]["file"] = "Qwen-Image-Edit-2509-Q8_0.gguf"
    big = tmp_path / "q8.yaml"
    big.write_text(yaml.safe_dump(config))
    code, lines = _plan_output(capsys, big)
    assert code == 1 and "does not fit the card" in lines[-2]  # Q8_0 (21.7 GB) beside the text encoder


def test_gguf_sizes_by_type_and_from_a_file_header(tmp_path):
    from serve_app.worker import gguf_files
    from serve_app.worker.tiny_model import ensure_tiny_gguf

    assert gguf_files.weight_bytes("Q4_0", 3072, 3072) == 3072 * 3072 * 18 // 32  # 18 bytes per 32 weights
    assert gguf_files.weight_bytes("Q8_0", 3072, 12288) == 3072 * 12288 * 34 // 32
    named = {"base": "builtin:tiny", "steps": 2, "cfg_scale": 1.0, "nominal_seconds": 1, "resolution": 256}
    path = ensure_tiny_gguf(tmp_path / "tiny", "Q4_0")
    folder = str(tmp_path / "tiny")
    here = build_registry({"g": {**named, "transformer_gguf": {"path": str(path)}}})["g"]
    plan = memplan.plan(here, PROFILES["bf16"], folder=folder)
    found = gguf_files.tensors(str(path))
    assert plan.weights["transformer"] == gguf_files.loaded_bytes(found)
    unpacked = memplan.plan(REGISTRY["tiny"], PROFILES["bf16"], folder=folder).weights["transformer"]
    assert plan.weights["transformer"] < unpacked
    assert memplan.gguf_bytes(here, memplan.architecture(folder, 256, 3, False))[1] == "Q4_0 (from the file's header)"
