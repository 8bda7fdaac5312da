"""GPU memory plan of a preset under a profile, computed without weights, without a GPU.

The components are built on the ``meta`` device from the preset's own configs when its files are on
this machine, else from the published full-size architecture (``architecture.FULL``). Then:

- weights: every parameter counted in the format the profile gives it. Quantized formats apply to
  the ``nn.Linear`` weights (as diffusers' and transformers' quantizers do; the text encoder's
  ``lm_head`` stays bf16, as transformers leaves it); biases, norms and embeddings stay bf16.
  Bytes per weight: bf16 2; fp8 and int8 1 plus a scale per output row; nf4 0.5 plus one 8-bit
  scale per 64 weights and one fp32 scale per 256 of those (double quantization).
- LoRA: an unfused adapter (quantized profiles) stays on the GPU: its size is read from the file's
  header when the file is here, else rank 64 on every linear layer of the blocks is assumed (the
  Lightning LoRAs' shape). A fused LoRA (bf16) costs the GPU nothing; its base copy is host memory.
- activations: each stage is run on meta tensors (shapes only) at the preset's working resolution
  with ``images`` reference images, and the bytes of the tensors alive at once are tracked; the peak
  is what the stage adds to the resident weights. Attention is counted as a fused kernel (its
  output only), as the flash/cuDNN backends the GPU worker picks run it. Weight-only formats add
  one dequantized bf16 copy of the largest layer; fp8 one 8-bit copy of the activations.
- offload: which weights are on the GPU at each stage (see ``_stage_peaks``). With everything
  resident, the next job's prompt is encoded while this one denoises (``worker.prepare_ahead``):
  the text encoder's activations are counted on top of the denoising ones.

The plan counts tensors; the CUDA context (about 0.5 GiB) and allocator fragmentation come on top,
which is why a 24 GiB card is planned to at most 22 GiB. ``bench/gpu_edit.py --profile`` measures
the real peak (``torch.cuda.max_memory_reserved``) to check the plan against a card.
"""

import functools
import json
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..profiles import GiB, Profile

TEMPLATE_TOKENS = 64  # the system template's prefix (dropped after encoding)
PROMPT_TOKENS = 256  # an instruction of up to 500 characters, with the image markers
CONDITION_SIDE = 384  # the Plus pipeline shows the text encoder each image at 384x384
LORA_RANK = 64


@dataclass(frozen=True)
class ComponentSizes:
    """Counts of one component's parameters, by how a profile may store them."""

    linear: tuple[tuple[int, int], ...]  # (out_features, in_features) of each quantizable weight
    other_params: int  # everything else, kept bf16
    blocks: tuple[int, ...]  # parameters per repeated block (for group offload)
    non_block_params: int

    def bytes(self, fmt: str) -> int:
        return sum(_weight_bytes(fmt, o, i) for o, i in self.linear) + 2 * self.other_params

    def largest_linear(self) -> int:
        return max((o * i for o, i in self.linear), default=0)

    def group_bytes(self, fmt: str) -> int:
        """On the GPU at once under block-level group offload with a stream: a block running, the
        next one arriving, and the parameters outside the blocks while they run."""
        share = self.bytes(fmt) / max(1, sum(self.blocks) + self.non_block_params)
        return int(share * (2 * max(self.blocks, default=0) + self.non_block_params))


@dataclass(frozen=True)
class Architecture:
    transformer: ComponentSizes
    text_encoder: ComponentSizes
    vae_params: int
    source: str  # "published 2509 architecture" or "config files of <name>"
    activations: dict  # stage -> bytes, at the planned resolution and image count
    tokens: int  # transformer sequence length (image + text)
    max_in_features: int
    block_lora_shapes: tuple[tuple[int, int], ...]  # (out, in) of each linear inside the blocks


@dataclass(frozen=True)
class PresetPlan:
    preset: str
    profile: str
    weights: dict  # component -> bytes on the GPU when resident
    lora: int  # adapter bytes on the GPU (0 when fused or none)
    stages: dict  # stage -> planned bytes on the GPU during it
    host: int  # host memory the profile keeps (offloaded weights, base copies, LoRA files)
    source: str

    @property
    def peak(self) -> int:
        return max(self.stages.values())

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=self.stages.get)


def _weight_bytes(fmt: str, out_f: int, in_f: int) -> int:
    n = out_f * in_f
    if fmt == "bf16":
        return 2 * n
    if fmt in ("fp8", "int8"):
        return n + 4 * out_f
    if fmt == "nf4":
        return n // 2 + n // 64 + 4 * (n // (64 * 256)) + 64
    raise ValueError(f"unknown weight format {fmt!r}")


class _LiveBytes:
    """A dispatch mode that tracks the bytes of the tensor storages alive at once (meta tensors
    included: they have sizes but no memory) and the peak of that sum."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._track(out)
                return out

        self.mode, self.live, self.peak, self._seen = Mode(), 0, 0, set()

    def _track(self, out) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._seen:
                continue
            size = storage.nbytes()
            self._seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)

    def _free(self, key, size) -> None:
        self.live -= size
        self._seen.discard(key)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def _fused_attention(*args, **kwargs):
    import torch

    query = kwargs.get("query", args[0] if args else None)
    return torch.empty_like(query)


def _measure(fn) -> int:
    import torch
    import torch.nn.functional as F

    saved = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _fused_attention
    try:
        with torch.inference_mode(), _LiveBytes() as tracker:
            fn()
        return tracker.peak
    finally:
        F.scaled_dot_product_attention = saved


def _sizes(module, blocks, skip=()) -> ComponentSizes:
    import torch

    linear, in_linear = [], set()
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and name not in skip:
            linear.append((sub.out_features, sub.in_features))
            in_linear.add(id(sub.weight))
    other = sum(p.numel() for p in module.parameters() if id(p) not in in_linear)
    block_params = tuple(sum(p.numel() for p in b.parameters()) for b in blocks)
    total = sum(p.numel() for p in module.parameters())
    return ComponentSizes(tuple(linear), other, block_params, total - sum(block_params))


@functools.lru_cache(maxsize=16)
def architecture(folder: str | None, resolution: int, images: int, vae_tiling: bool) -> Architecture:
    """The sizes and activation peaks of the model in ``folder`` (None: the published full size)."""
    import torch

    from .architecture import meta_components

    transformer, text_encoder, vae = meta_components(Path(folder) if folder else None)
    language = text_encoder.model.language_model
    t_sizes = _sizes(transformer, transformer.transformer_blocks)
    te_sizes = _sizes(text_encoder, list(language.layers) + list(text_encoder.model.visual.blocks),
                      skip=("lm_head",))
    side = resolution // 16  # latent patches per side
    text_len = PROMPT_TOKENS + images * (CONDITION_SIDE // 28) ** 2
    hidden = language.config.hidden_size
    dtype, meta = torch.bfloat16, "meta"

    def encode_text():
        n = TEMPLATE_TOKENS + text_len
        out = language(inputs_embeds=torch.empty(1, n, hidden, dtype=dtype, device=meta),
                       position_ids=torch.zeros(3, 1, n, dtype=torch.long, device=meta), output_hidden_states=True)
        text_encoder.lm_head(out.last_hidden_state)

    def denoise():
        transformer(hidden_states=torch.empty(1, side * side * (1 + images), 64, dtype=dtype, device=meta),
                    encoder_hidden_states=torch.empty(1, text_len, transformer.config.joint_attention_dim,
                                                      dtype=dtype, device=meta),
                    encoder_hidden_states_mask=torch.ones(1, text_len, dtype=torch.long, device=meta),
                    timestep=torch.ones(1, dtype=dtype, device=meta),
                    img_shapes=[[(1, side, side)] * (1 + images)], return_dict=False)

    if vae_tiling:
        vae.enable_tiling()
    pixels = torch.empty(1, 3, 1, resolution, resolution, dtype=dtype, device=meta)
    latents = torch.empty(1, vae.config.z_dim, 1, resolution // 8, resolution // 8, dtype=dtype, device=meta)
    vision = text_encoder.config.vision_config
    patches = images * (CONDITION_SIDE // vision.patch_size) ** 2
    activations = {
        # The vision tower's data-dependent windows do not run on meta tensors: its few hundred
        # patches are counted as four hidden-size and two MLP-size tensors alive at once.
        "text_encoder": _measure(encode_text) + 2 * patches * (4 * vision.hidden_size + 2 * vision.intermediate_size),
        "vae_encode": _measure(lambda: vae.encode(pixels)),
        "denoise": _measure(denoise),
        "vae_decode": _measure(lambda: vae.decode(latents)),
    }
    block_lora = tuple((m.out_features, m.in_features) for m in transformer.transformer_blocks.modules()
                       if isinstance(m, torch.nn.Linear))
    return Architecture(
        transformer=t_sizes, text_encoder=te_sizes, vae_params=sum(p.numel() for p in vae.parameters()),
        source=f"config files of {Path(folder).name}" if folder else "published Qwen-Image-Edit-2509 architecture",
        activations=activations, tokens=side * side * (1 + images) + text_len,
        max_in_features=max(i for _, i in t_sizes.linear), block_lora_shapes=block_lora)


def lora_file_bytes(path: str | None) -> int | None:
    """Bytes of the tensors in a safetensors file, from its header only; None if it is not here."""
    if not path or not Path(path).expanduser().is_file():
        return None
    sizes = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1}
    with open(Path(path).expanduser(), "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    total = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        count = 1
        for dim in info["shape"]:
            count *= dim
        total += count * sizes.get(info["dtype"], 2)
    return total


def gguf_bytes(preset, arch: Architecture) -> tuple[int, str]:
    """(bytes, how they were found) of ``preset``'s GGUF transformer once loaded: from the file's
    header when the file is here (exact), else from the type its name says (``gguf_files.BITS_PER_WEIGHT``
    on the linear weights, the rest bf16). A name that says no type is planned as Q8_0, the largest
    usual one."""
    from . import gguf_files

    path = preset.transformer_gguf.local_path()
    if path is not None:
        try:
            found = gguf_files.tensors(path)
            return gguf_files.loaded_bytes(found), f"{gguf_files.main_type(found)} (from the file's header)"
        except gguf_files.BadGGUF:
            pass  # the worker refuses the file with the reason; plan it by its name meanwhile
    named = gguf_files.type_from_name(preset.transformer_gguf.name)
    qtype = named or "Q8_0"
    total = sum(gguf_files.weight_bytes(qtype, o, i) for o, i in arch.transformer.linear)
    how = f"{qtype} (type from the file's name)" if named else "of no type its name says (planned as Q8_0)"
    return total + 2 * arch.transformer.other_params, how


def lora_path(preset) -> str | None:
    """Where the preset's LoRA file is on this machine, or None."""
    return preset.lora.local_path() if preset.lora is not None else None


def _stage_peaks(profile: Profile, w: dict, lora: int, act: dict, scratch: int, arch: Architecture) -> dict:
    """Bytes on the GPU during each stage: the weights there at that moment plus the stage's peak."""
    tr, te, vae = w["transformer"], w["text_encoder"], w["vae"]
    if profile.offload == "none":
        resident = {"text_encoder": tr + te + vae + lora, "vae_encode": tr + te + vae + lora,
                    "denoise": tr + te + vae + lora, "vae_decode": tr + te + vae + lora}
    elif profile.offload == "text_encoder":  # on the GPU only inside encode_prompt
        resident = {"text_encoder": tr + te + vae + lora, "vae_encode": tr + vae + lora,
                    "denoise": tr + vae + lora, "vae_decode": tr + vae + lora}
    elif profile.offload == "model":
        # diffusers' chain text_encoder -> transformer -> vae: a component's hook sends the previous
        # one home when it starts, so the text encoder is still there while the VAE encodes.
        resident = {"text_encoder": te, "vae_encode": te + vae, "denoise": tr + lora + vae, "vae_decode": vae}
    else:  # group: two blocks (running, arriving) plus the parameters outside the blocks
        stream_tr = arch.transformer.group_bytes(profile.transformer)
        stream_te = arch.text_encoder.group_bytes(profile.text_encoder)
        resident = {"text_encoder": stream_te + vae, "vae_encode": vae, "denoise": stream_tr + lora + vae,
                    "vae_decode": vae}
    stages = {stage: resident[stage] + act[stage] for stage in resident}
    stages["denoise"] += scratch
    if profile.offload == "none":  # the worker encodes the next job's prompt while this one denoises
        stages["denoise"] += act["text_encoder"]
    return stages


def plan(preset, profile: Profile, images: int = 3, folder: str | None = None) -> PresetPlan:
    """The GPU memory ``preset`` needs under ``profile`` with up to ``images`` input images.

    ``folder``: the preset's model folder when its files are here (else the published architecture)."""
    arch = architecture(folder, preset.resolution, images, profile.vae_tiling)
    gguf = preset.transformer_gguf is not None
    weights = {"transformer": gguf_bytes(preset, arch)[0] if gguf else arch.transformer.bytes(profile.transformer),
               "text_encoder": arch.text_encoder.bytes(profile.text_encoder),
               "vae": 2 * arch.vae_params}
    lora_bytes = 0
    if preset.lora is not None:
        from_file = lora_file_bytes(lora_path(preset))
        lora_bytes = from_file if from_file is not None else sum(
            2 * LORA_RANK * (o + i) for o, i in arch.block_lora_shapes)
    lora_mode = profile.lora_mode_for(gguf)
    on_gpu_lora = lora_bytes if lora_mode == "adapter" else 0
    scratch = 0
    if gguf or profile.transformer in ("int8", "nf4"):
        scratch = 2 * arch.transformer.largest_linear()  # one weight dequantized to bf16
    elif profile.transformer == "fp8":
        scratch = arch.tokens * arch.max_in_features  # the activations quantized to 8 bits
    stages = _stage_peaks(profile, weights, on_gpu_lora, arch.activations, scratch, arch)
    host = lora_bytes  # LoRA files are read once and kept in host memory
    if lora_mode == "fuse" and preset.lora is not None:
        host += sum(2 * o * i for o, i in arch.block_lora_shapes)  # base copies for the exact restore
    if profile.offload == "text_encoder":
        host += weights["text_encoder"]
    elif profile.offload in ("model", "group"):
        host += weights["transformer"] + weights["text_encoder"]
    return PresetPlan(preset.name, profile.name, weights, on_gpu_lora, stages, host, arch.source)


def gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def table(plans: list[PresetPlan]) -> list[str]:
    """The plan as aligned text lines (one header, one line per preset)."""
    rows = [("preset", "profile", "transformer", "text enc.", "vae", "lora", "peak GiB", "at stage", "host GiB")]
    for p in plans:
        rows.append((p.preset, p.profile, gib(p.weights["transformer"]), gib(p.weights["text_encoder"]),
                     gib(p.weights["vae"]), gib(p.lora), gib(p.peak), p.peak_stage.replace("_", " "), gib(p.host)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def config_plan(args) -> tuple[list[str], int, bool]:
    """``qwen-serve --plan``: the plan of every preset of a config (``AppArgs``) under the profile it
    would run with, against the card size the config names (``worker.gpu_memory_gib``). Returns the
    lines to print (the last one ``plan: <N> GiB peak``), the worst peak in bytes, and whether every
    preset fits the card."""
    from ..presets import BUILTIN_TINY, build_registry
    from ..profiles import AUTO, PROFILES, DeviceInfo, choose, usable
    from .architecture import local_folder

    registry = build_registry(args.presets)
    worker = args.worker
    card = int(worker.gpu_memory_gib * GiB) if worker.gpu_memory_gib else None
    lines = [f"card: {worker.gpu_memory_gib:g} GiB (worker.gpu_memory_gib); a plan may fill {gib(usable(card))} GiB"
             if card else "card: not named (set worker.gpu_memory_gib to check the plan against a card)",
             f"up to {args.max_images} input image(s) per job, at each preset's working area"]
    real = [p for p in registry.values() if p.base != BUILTIN_TINY]
    for p in registry.values():
        if p.base == BUILTIN_TINY:
            lines.append(f"{p.name}: the embedded CPU model (a few MB), not planned")

    def folder(preset):
        found = local_folder(preset.base)
        return str(found) if found else None

    def profile_of(preset):
        if preset.profile:
            return PROFILES[preset.profile], f"presets.{preset.name}.profile"
        if worker.profile != AUTO:
            return PROFILES[worker.profile], "worker.profile"
        if card is None:
            return PROFILES["bf16"], "auto with no card size: planned as bf16"
        # The card's kind is not in the config: FP8 tensor cores are assumed (RTX 40xx and newer,
        # L4/L40S, H100/H200); on an older card auto skips the FP8 profiles at start.
        device = DeviceInfo("cuda", f"a {worker.gpu_memory_gib:g} GiB card", (8, 9), card, card,
                            backends=frozenset({"torchao", "bitsandbytes"}))
        chosen, _ = choose(device, lambda prof: plan(preset, prof, args.max_images, folder(preset)).peak,
                           gguf=preset.transformer_gguf is not None)
        return (chosen, "auto") if chosen else (PROFILES["bf16-stream"], "auto: nothing fits; smallest shown")

    plans, sources = [], set()
    for preset in real:
        profile, why = profile_of(preset)
        result = plan(preset, profile, args.max_images, folder(preset))
        plans.append(result)
        sources.add(result.source)
        described = profile.describe()
        if preset.transformer_gguf is not None:
            described = profile.describe(gguf_bytes(preset, architecture(folder(preset), preset.resolution,
                                                                         args.max_images, profile.vae_tiling))[1])
        lines.append(f"{preset.name}: profile {profile.name} ({why}): {described}")
    if not plans:
        return lines + ["plan: 0.0 GiB peak"], 0, True
    lines.append("architecture: " + "; ".join(sorted(sources)))
    lines += table(plans)
    worst = max(p.peak for p in plans)
    fits = card is None or worst <= usable(card)
    if card:
        over = [p.preset for p in plans if p.peak > usable(card)]
        lines.append(f"every preset fits the card ({gib(worst)} of {gib(usable(card))} GiB)" if fits else
                     f"does not fit the card: {', '.join(over)} (more than {gib(usable(card))} GiB)")
    lines.append(f"plan: {gib(worst)} GiB peak")
    return lines, worst, fits
