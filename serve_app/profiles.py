"""Memory and precision profiles: how a model worker holds a preset's model on its card.

A profile is a named, documented combination of
- the transformer's weights: ``bf16``; ``fp8`` (torchao, FP8 weights and activations, per-row scales;
  GPUs with FP8 tensor cores); ``int8`` (torchao weight-only); ``nf4`` (bitsandbytes 4-bit NormalFloat
  with double quantization);
- the text encoder's weights: ``bf16``, ``int8`` (torchao weight-only) or ``nf4`` (bitsandbytes);
- offload: ``none`` (all resident), ``text_encoder`` (the text encoder stays in host memory between
  jobs and visits the GPU only to encode the instruction), ``model`` (diffusers' model CPU offload:
  each component visits the GPU in turn), ``group`` (diffusers' group offload: transformer and text
  encoder blocks streamed from pinned host memory on a side CUDA stream, overlapping compute);
- VAE tiling (decodes in tiles: the VAE's 3.4 GiB activation peak at 1024x1024 drops to about 1 GiB).

``PROFILES`` lists them fastest first; ``auto`` (``choose``) takes the first that this device can run
and whose planned peak (``memplan``) fits its free memory. This module is pure: the device is
described by a ``DeviceInfo`` (``probe`` fills one in from torch), so the choice is unit-tested with
fake cards.
"""

from dataclasses import dataclass, field

GiB = 1024 ** 3
AUTO = "auto"
# What the plan counts is tensors; the CUDA context (about 0.5 GiB) and the allocator's rounding and
# fragmentation come on top: that much of a card is never planned (2 GiB of a 24 GiB card).
HEADROOM_BYTES, HEADROOM_SHARE = 2 * 1024 ** 3, 0.06


def usable(card_bytes: int) -> int:
    """What a plan may fill of ``card_bytes``."""
    return max(0, card_bytes - max(HEADROOM_BYTES, int(card_bytes * HEADROOM_SHARE)))


@dataclass(frozen=True)
class Profile:
    name: str
    transformer: str  # bf16 | fp8 | int8 | nf4
    text_encoder: str  # bf16 | int8 | nf4
    offload: str  # none | text_encoder | model | group
    vae_tiling: bool
    cards: str  # the cards it is meant for, in words
    summary: str

    def lora_mode_for(self, gguf: bool) -> str:
        """``lora_mode`` for a preset whose transformer is (``gguf``) or is not a GGUF file: LoRAs on
        GGUF weights are always adapters (fusing into packed weights fails, diffusers issue #12047)."""
        return "adapter" if gguf else self.lora_mode

    @property
    def lora_mode(self) -> str:
        """``fuse``: LoRAs are fused into bf16 weights (restored exactly from a host copy on switch).
        ``adapter``: LoRAs stay unfused PEFT adapters over the quantized weights, which never change
        (fusing into 4/8-bit weights would re-quantize them, not reversibly), and under group offload,
        where the weights live in host memory between uses."""
        return "fuse" if self.transformer == "bf16" and self.offload != "group" else "adapter"

    @property
    def quantized(self) -> bool:
        return self.transformer != "bf16" or self.text_encoder != "bf16"

    def describe(self, gguf_type: str | None = None) -> str:
        """In words; ``gguf_type``: the preset's transformer is a GGUF file of that type instead."""
        transformer = f"GGUF {gguf_type}" if gguf_type else self.transformer
        parts = [f"transformer {transformer}", f"text encoder {self.text_encoder}"]
        if self.offload != "none":
            parts.append({"text_encoder": "text encoder in host memory between jobs",
                          "model": "model CPU offload", "group": "group offload (CUDA streams)"}[self.offload])
        if self.vae_tiling:
            parts.append("VAE tiling")
        return ", ".join(parts)


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("fp8", "fp8", "bf16", "none", False,
            "H100, H200, L40S, RTX 6000 Ada (48 GB and up, FP8 tensor cores)",
            "FP8 transformer, bf16 text encoder, all resident: the fastest on FP8-capable cards"),
    Profile("bf16", "bf16", "bf16", "none", False,
            "A100 80 GB, H100, H200 (80 GB class)",
            "everything bf16 and resident: the reference quality, LoRAs fused"),
    Profile("int8", "int8", "int8", "none", False,
            "A100 40 GB, A6000, A40, L40 (40-48 GB, no FP8 needed); also runs on a CPU",
            "int8 weight-only transformer and text encoder, all resident"),
    Profile("fp8-lite", "fp8", "nf4", "none", True,
            "RTX 5090 and other 32 GB FP8-capable cards",
            "FP8 transformer, 4-bit NF4 text encoder, all resident, VAE tiled"),
    Profile("nf4", "nf4", "nf4", "none", True,
            "RTX 4090, RTX 3090, A10G, L4 (24 GB)",
            "4-bit NF4 transformer and text encoder, all resident, VAE tiled"),
    Profile("nf4-lean", "nf4", "nf4", "text_encoder", True,
            "RTX 4000 Ada, A4500, RTX 3080 20 GB (20 GB)",
            "4-bit NF4 transformer resident, NF4 text encoder in host memory between jobs, VAE tiled"),
    Profile("nf4-offload", "nf4", "nf4", "model", True,
            "RTX 4080, RTX 4060 Ti 16 GB, A4000 (16 GB)",
            "4-bit NF4 components, each on the GPU only while it runs, VAE tiled"),
    Profile("bf16-stream", "bf16", "bf16", "group", True,
            "any CUDA card of 8 GB or more, with 64 GB of host memory",
            "full bf16 quality, blocks streamed from pinned host memory: slow, PCIe-bound"),
)}


def known(name: str) -> bool:
    return name == AUTO or name in PROFILES


def unknown_profile_message(name: str) -> str:
    return f"unknown profile {name!r}: choose auto or one of {', '.join(PROFILES)}"


@dataclass(frozen=True)
class DeviceInfo:
    """What a worker's device offers. ``total``/``free`` in bytes (free: what this process may still
    take, after any configured cap); ``capability``: CUDA compute capability."""

    kind: str  # cpu | cuda
    name: str = "cpu"
    capability: tuple[int, int] = (0, 0)
    total: int = 0
    free: int = 0
    host_free: int = 0
    backends: frozenset[str] = field(default_factory=frozenset)  # importable: torchao, bitsandbytes


def missing(profile: Profile, device: DeviceInfo, gguf: bool = False) -> str | None:
    """None when ``device`` can run ``profile``; otherwise a sentence naming the profile and what is
    missing (shown to operators and stations: no paths). ``gguf``: for a preset whose transformer
    comes from a GGUF file, so that only the profile's text encoder format and offload apply."""
    formats = {profile.text_encoder} if gguf else {profile.transformer, profile.text_encoder}
    gpu_only = []
    if "fp8" in formats:
        if device.kind != "cuda" or device.capability < (8, 9):
            return (f"Profile {profile.name} needs FP8 tensor cores (an NVIDIA GPU of compute capability "
                    f"8.9 or newer: RTX 40xx/50xx, L4, L40S, H100, H200); this worker has "
                    f"{_device_words(device)}. Use profile int8, bf16 or auto.")
    if "nf4" in formats:
        gpu_only.append("4-bit bitsandbytes weights")
    if profile.offload != "none":
        gpu_only.append("offloading to host memory")
    if gpu_only and device.kind != "cuda":
        return (f"Profile {profile.name} needs a CUDA GPU ({' and '.join(gpu_only)}); this worker has "
                f"{_device_words(device)}. Use profile bf16 or int8 on a CPU, or auto.")
    needed = {"fp8": "torchao", "int8": "torchao", "nf4": "bitsandbytes"}
    for fmt in sorted(formats - {"bf16"}):
        package = needed[fmt]
        if package not in device.backends:
            return (f"Profile {profile.name} needs the {package} package for its {fmt} weights, which is not "
                    f"installed on this worker (pip install {package}).")
    return None


def _device_words(device: DeviceInfo) -> str:
    if device.kind != "cuda":
        return "no GPU"
    return f"{device.name} (compute capability {device.capability[0]}.{device.capability[1]})"


def choose(device: DeviceInfo, need: "callable", candidates: tuple[str, ...] | None = None,
           gguf: bool = False) -> tuple[Profile | None, str]:
    """``auto``: the fastest profile that ``device`` can run and whose planned peak fits its free
    memory, with the reason in words. ``need(profile)`` is the planned peak in bytes. On a CPU,
    ``bf16`` (weights in float32 there). ``(None, reason)`` when nothing fits. ``gguf``: the presets'
    transformers are GGUF files (only the profiles' text encoder and offload choices differ)."""
    if device.kind != "cuda":
        return PROFILES["bf16"], "auto on a CPU worker: bf16 (float32 on the CPU; quantized profiles need a GPU)"
    budget = usable(device.free)
    skipped = []
    for name in candidates or tuple(PROFILES):
        profile = PROFILES[name]
        why_not = missing(profile, device, gguf)
        if why_not:
            skipped.append(f"{name}: not on this card")
            continue
        peak = need(profile)
        if peak > budget:
            skipped.append(f"{name}: needs {peak / GiB:.1f} GiB")
            continue
        before = f" (faster ones do not fit: {'; '.join(skipped)})" if skipped else ""
        return profile, (f"auto: {name} needs {peak / GiB:.1f} GiB of the {device.free / GiB:.1f} GiB free on "
                         f"{device.name}, the fastest profile that fits{before}")
    return None, (f"auto: no profile fits the {device.free / GiB:.1f} GiB free on {device.name} "
                  f"({'; '.join(skipped)}). Free memory on the card or give this worker a bigger one.")


def probe(device: str, memory_cap_gib: float | None = None) -> DeviceInfo:
    """Describe ``device`` (``cpu`` or ``cuda``); ``memory_cap_gib`` caps what counts as the card."""
    import importlib.util
    import os

    import torch

    backends = frozenset(p for p in ("torchao", "bitsandbytes") if importlib.util.find_spec(p) is not None)
    try:
        host_free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        host_free = 0
    if device != "cuda":
        return DeviceInfo("cpu", host_free=host_free, backends=backends)
    index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    if memory_cap_gib:
        cap = int(memory_cap_gib * GiB)
        free = max(0, min(free, cap - (total - free)))
        total = min(total, cap)
    return DeviceInfo("cuda", torch.cuda.get_device_name(index), tuple(torch.cuda.get_device_capability(index)),
                      total, free, host_free, backends)
