"""The full-size Qwen-Image-Edit-Plus architecture with random weights, built on the device: what both
GPU benchmarks (``gpu_edit.py``, ``gpu_serving.py``) measure. No download: the time per step does not
depend on the weights' values. Needs only torch, diffusers and transformers."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_app.worker import architecture  # noqa: E402


def build_pipeline(device, dtype, smoke: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from serve_app.worker.tiny_model import SPECIAL_TOKENS, _train_tokenizer

    raw = _train_tokenizer()
    tokenizer = Qwen2Tokenizer(tokenizer_object=raw)
    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}
    t0 = time.perf_counter()
    # Qwen2.5-VL-7B and Qwen-Image-Edit-2509 as published (toy sizes for --smoke), in the target
    # dtype straight on the device: no fp32 copy, no host RAM.
    transformer, text_encoder, vae_model = architecture.build_components(
        architecture.SMOKE if smoke else architecture.FULL, device, dtype, ids)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), video_processor=Qwen2VLVideoProcessor(),
                                 tokenizer=tokenizer)
    pipe = QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae_model,
                                     text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
                                     transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in transformer.parameters())
    return pipe, params, time.perf_counter() - t0


def to_random_gguf(module, qtype: str, skip: tuple[str, ...] = ()) -> int:
    """Replace the linear layers of ``module`` whose rows split into whole ``qtype`` blocks by
    diffusers' ``GGUFLinear`` holding random blocks of that type, made on the layer's device (as a
    GGUF file loads: packed weights, dequantized to bf16 by each layer as it runs). Returns the
    layers replaced."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from serve_app.worker.gguf_files import random_blocks

    kind = GGMLQuantizationType[qtype]
    block, _ = GGML_QUANT_SIZES[kind]
    replaced = 0
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not isinstance(child, torch.nn.Linear) or full in skip or child.in_features % block:
                continue
            device, dtype = child.weight.device, child.weight.dtype
            layer = GGUFLinear(child.in_features, child.out_features, child.bias is not None, compute_dtype=dtype,
                               device="meta")
            data = random_blocks(qtype, child.out_features, child.in_features, device, seed=replaced)
            layer.weight = GGUFParameter(data, quant_type=kind)
            layer.bias = child.bias
            setattr(parent, name, layer)
            del child
            replaced += 1
    return replaced
