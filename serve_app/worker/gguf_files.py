"""GGUF transformer files: what a type costs in memory, whether a file fits a base's transformer,
and writing one (the tiny model's, and random full-size ones for the GPU benchmark).

The files 24 GB card owners download (QuantStack's and unsloth's Qwen-Image-Edit GGUFs) hold the
transformer's weights under diffusers' own names, so diffusers loads them as they are
(``QwenImageTransformer2DModel.from_single_file`` with a ``GGUFQuantizationConfig``: weights stay
packed, each linear layer dequantizes its weight to the compute dtype when it runs). What this module
checks before that load is what diffusers would otherwise report as a traceback: a file that is not
GGUF, one that is truncated, one of another model (names or shapes that are not the base's).

Reading a header memory-maps the file and touches only its metadata: cheap for a 12 GB file.
Pure functions of their inputs; numpy, ``gguf`` and (for the check) torch only.
"""

import os
import re
from pathlib import Path

# Bits per weight of the quantized linear weights, by GGUF type. Uniform types: the format's own
# block size (Q4_0: 18 bytes per 32 weights = 4.5). K-quant mixes (_S/_M/_L give some tensors a
# larger type): what the published Qwen-Image-Edit-2509 files weigh per transformer weight
# (QuantStack: Q4_K_S 12.1 GB, Q4_K_M 13.1 GB, Q5_K_M 14.9 GB for 20.4 B weights).
BITS_PER_WEIGHT = {
    "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q3_K_S": 3.4375, "Q3_K_M": 3.9, "Q4_0": 4.5, "Q4_1": 5.0, "Q4_K_S": 4.74, "Q4_K_M": 5.13,
    "Q5_0": 5.5, "Q5_1": 6.0, "Q5_K_S": 5.5, "Q5_K_M": 5.83, "Q6_K": 6.5625, "Q8_0": 8.5, "BF16": 16.0,
    "F16": 16.0,
}
# The types the gguf package can write from numpy (the K-quants it can only read).
WRITABLE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16")
_TYPE_IN_NAME = re.compile(r"(?i)(?:^|[-_.])(" + "|".join(sorted(BITS_PER_WEIGHT, key=len, reverse=True))
                           + r")(?=[-_.]|$)")


def type_from_name(filename: str) -> str | None:
    """The GGUF type a file's name says (``Qwen-Image-Edit-2509-Q4_K_M.gguf`` -> ``Q4_K_M``), or None."""
    stem = Path(filename).name.removesuffix(".gguf")
    found = _TYPE_IN_NAME.findall(stem)
    return found[-1].upper() if found else None


def weight_bytes(qtype: str, out_features: int, in_features: int) -> int:
    """Bytes of one linear weight held in ``qtype``."""
    return int(out_features * in_features * BITS_PER_WEIGHT[qtype] / 8)


def _reader(path: str):
    from gguf import GGUFReader

    return GGUFReader(path)


class BadGGUF(ValueError):
    """A file that is not a usable GGUF transformer; the message says why, in words, without a path."""


def tensors(path: str) -> dict[str, tuple[tuple[int, ...], str, int]]:
    """Name -> (torch shape, GGUF type name, bytes in the file) of every tensor in the file's header.
    Raises ``BadGGUF`` for a file that is not GGUF or is cut short."""
    size = os.path.getsize(path)
    if size == 0:
        raise BadGGUF("it is empty")
    try:
        reader = _reader(path)
    except ValueError as exc:
        if "magic" in str(exc).lower():
            raise BadGGUF("it is not a GGUF file") from None
        raise BadGGUF(f"it is damaged or truncated ({size / 1e9:.2f} GB on disk, shorter than its "
                      "header says)") from None
    except Exception:  # a header cut inside its own fields
        raise BadGGUF(f"it is damaged or truncated ({size / 1e9:.2f} GB on disk)") from None
    # GGML lists dimensions innermost first: a torch (out, in) weight is [in, out] there.
    return {t.name: (tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name, int(t.n_bytes))
            for t in reader.tensors}


def mismatch(found: dict, expected: dict[str, tuple[int, ...]]) -> str | None:
    """None when the file's tensors are exactly the transformer's parameters (names and shapes),
    else what differs, in words."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} tensors the model does not have (e.g. {extra[0]})")
        if missing:
            parts.append(f"{len(missing)} of the model's {len(expected)} weights missing (e.g. {missing[0]})")
        return "it is not a transformer of this model: " + "; ".join(parts)
    for name, shape in expected.items():
        if found[name][0] != shape:
            return (f"it is not a transformer of this model: {name} is {'x'.join(map(str, found[name][0]))} "
                    f"there, {'x'.join(map(str, shape))} in the model")
    unsupported = sorted({t for _, t, _ in found.values()} - set(BITS_PER_WEIGHT) - {"F32"})
    if unsupported:
        return f"it holds weights of type {unsupported[0]}, which diffusers cannot dequantize"
    return None


def loaded_bytes(found: dict) -> int:
    """Memory the transformer takes once loaded: quantized tensors as packed in the file, the others
    (norms, biases, kept F32/F16 in the file) in bf16, as diffusers casts them."""
    total = 0
    for shape, qtype, n_bytes in found.values():
        if qtype in ("F32", "F16"):
            count = 1
            for d in shape:
                count *= d
            total += 2 * count
        else:
            total += n_bytes
    return total


def main_type(found: dict) -> str:
    """The type that holds most of the file's bytes (what its name usually says)."""
    share: dict[str, int] = {}
    for _, qtype, n_bytes in found.values():
        share[qtype] = share.get(qtype, 0) + n_bytes
    return max(share, key=share.get) if share else "F32"


def write(state_dict: dict, path: Path, qtype: str) -> Path:
    """Write ``state_dict`` (name -> torch tensor) as a GGUF file: each 2-D weight whose rows split
    into whole blocks in ``qtype``, the rest F32, as the published conversions do. Written to a
    temporary name and renamed, so a reader never sees half a file."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    if qtype not in WRITABLE:
        raise ValueError(f"the gguf package writes {', '.join(WRITABLE)}, not {qtype}")
    kind = GGMLQuantizationType[qtype]
    block, _ = GGML_QUANT_SIZES[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = GGUFWriter(str(tmp), "qwen_image")
    for name, tensor in state_dict.items():
        values = tensor.detach().float().cpu().numpy()
        if values.ndim == 2 and values.shape[-1] % block == 0:
            writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


# Where each type's float16 scales sit in its block (bytes from the block's start): the rest of a
# block is packed integers, which any random bytes fill validly.
_SCALE_OFFSETS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q2_K": (80, 82),
                  "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(qtype: str, out_features: int, in_features: int, device="cpu", seed: int = 0, scale: float = 2e-3):
    """A (out, packed bytes) uint8 tensor of random ``qtype`` blocks with sane float16 scales: what a
    GGUF file holds for one linear weight, made on ``device`` without quantizing anything (for the
    GPU benchmark: dequantizing random blocks costs what real ones do)."""
    import torch
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    if in_features % block:
        raise ValueError(f"{qtype} packs rows in blocks of {block}; {in_features} is not a multiple")
    gen = torch.Generator(device=device).manual_seed(seed)
    blocks = torch.randint(0, 256, (out_features, in_features // block, size), dtype=torch.uint8, device=device,
                           generator=gen)
    value = torch.tensor([scale], dtype=torch.float16, device=device).view(torch.uint8)
    for offset in _SCALE_OFFSETS[qtype]:
        blocks[..., offset:offset + 2] = value
    return blocks.reshape(out_features, -1)
