"""Putting a pipeline on its device the way a profile says: quantized formats and offload.

Quantization goes through the libraries' own support: diffusers' ``PipelineQuantizationConfig``
with torchao (fp8, int8) or bitsandbytes (nf4) configs, applied while ``from_pretrained`` loads the
weights (``quantization_config``); ``quantize_module`` applies the same torchao configs to a module
built in memory (the GPU benchmark's random weights). Offload uses diffusers' and accelerate's
hooks. Imports only torch, diffusers, transformers and the chosen backend, lazily (the GPU
benchmark runs without pydantic or Ray).
"""

import logging

from ..profiles import Profile

log = logging.getLogger(__name__)


def _torchao_config(fmt: str):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow

    if fmt == "fp8":  # weights and activations in FP8 with a scale per row: FP8 tensor-core matmuls
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    return Int8WeightOnlyConfig()


def _bnb_nf4(cls, dtype):
    return cls(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
               bnb_4bit_compute_dtype=dtype)


def quantization_config(profile: Profile, dtype, transformer: bool = True):
    """The ``PipelineQuantizationConfig`` for ``profile`` (None when everything stays in ``dtype``).
    ``transformer=False``: the transformer comes quantized already (a GGUF file): only the text encoder's."""
    mapping = {}
    if transformer and profile.transformer != "bf16":
        if profile.transformer == "nf4":
            from diffusers import BitsAndBytesConfig

            mapping["transformer"] = _bnb_nf4(BitsAndBytesConfig, dtype)
        else:
            from diffusers import TorchAoConfig

            mapping["transformer"] = TorchAoConfig(_torchao_config(profile.transformer))
    if profile.text_encoder != "bf16":
        if profile.text_encoder == "nf4":
            from transformers import BitsAndBytesConfig

            mapping["text_encoder"] = _bnb_nf4(BitsAndBytesConfig, dtype)
        else:
            from transformers import TorchAoConfig

            mapping["text_encoder"] = TorchAoConfig(_torchao_config(profile.text_encoder))
    if not mapping:
        return None
    from diffusers import PipelineQuantizationConfig

    return PipelineQuantizationConfig(quant_mapping=mapping)


def quantize_module(module, fmt: str, skip: tuple[str, ...] = ()) -> None:
    """Quantize a module's linear layers in place to ``fmt`` (torchao formats), as the loaders do."""
    import torch
    from torchao.quantization import quantize_

    def wanted(sub, name):
        return isinstance(sub, torch.nn.Linear) and name not in skip

    quantize_(module, _torchao_config(fmt), filter_fn=wanted)


def place(pipe, profile: Profile, device: str) -> None:
    """Move ``pipe`` (as loaded, on the CPU) to ``device`` with the profile's offload and VAE tiling."""
    import torch

    if profile.vae_tiling:
        pipe.vae.enable_tiling()
    if profile.offload == "none" or device == "cpu":
        pipe.to(device)
    elif profile.offload == "text_encoder":
        _text_encoder_visits(pipe, device)
    elif profile.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif profile.offload == "group":
        # Block by block, the next block copied from pinned host memory on a side stream while the
        # current one computes; the VAE (0.25 GB) stays resident.
        pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                  offload_type="block_level", num_blocks_per_group=1, use_stream=True,
                                  exclude_modules=["vae"])
        pipe.vae.to(device)
    else:
        raise ValueError(f"unknown offload {profile.offload!r}")


def _text_encoder_visits(pipe, device: str) -> None:
    """Transformer and VAE resident; the text encoder lives in host memory and comes to the GPU only
    inside ``encode_prompt`` (accelerate's offload hook moves it in on its forward; it is sent home
    as soon as the prompt is encoded, before the VAE and the transformer need the room)."""
    from accelerate import cpu_offload_with_hook

    pipe.transformer.to(device)
    pipe.vae.to(device)
    _, hook = cpu_offload_with_hook(pipe.text_encoder, execution_device=device)
    encode = pipe.encode_prompt

    def encode_then_offload(*args, **kwargs):
        try:
            return encode(*args, **kwargs)
        finally:
            hook.offload()

    pipe.encode_prompt = encode_then_offload
