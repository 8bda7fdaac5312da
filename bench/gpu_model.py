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
