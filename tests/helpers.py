"""Test support: a tiny LoRA in the Lightning LoRAs' key format, made for the tiny transformer."""

from pathlib import Path

import torch
from safetensors.torch import save_file


def make_lightning_lora(transformer, path: Path, rank: int = 4, seed: int = 0, scale: float = 0.5,
                        prefix: str = "", only: str | None = None, dtype=torch.float32, device: str = "cpu") -> Path:
    """Write ``<layer>.lora_down.weight``, ``<layer>.lora_up.weight`` and ``<layer>.alpha`` for every
    linear layer of the transformer blocks (as the Lightning files do), with random values.

    ``prefix`` renames the layers (e.g. ``single_transformer_blocks`` for a LoRA of another model).
    ``dtype``/``device``: where the random values are drawn (the GPU benchmark makes a full-size bf16
    one, about as large as the real Lightning files, on the GPU)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for name, module in transformer.named_modules():
        if not (name.startswith("transformer_blocks.") and isinstance(module, torch.nn.Linear)):
            continue
        if only and only not in name:
            continue
        key = (prefix + name[len("transformer_blocks"):]) if prefix else name
        out_f, in_f = module.out_features, module.in_features  # (a quantized weight may be packed)
        draw = dict(generator=gen, device=device, dtype=dtype)
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_f, **draw) * scale
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_f, rank, **draw) * scale
        tensors[f"{key}.alpha"] = torch.tensor(float(rank), dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(path))
    return path
