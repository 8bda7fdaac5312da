"""Build the embedded ``tiny`` model: a randomly initialised Qwen-Image-Edit-Plus pipeline.

The tiny model has the real architecture (QwenImageTransformer2DModel, AutoencoderKLQwenImage,
Qwen2.5-VL text encoder, Qwen2 tokenizer, Qwen2-VL processor, flow-match scheduler) at a few hundred
thousand parameters, so tests and the CPU default exercise exactly the loading and inference code
that the real presets use. It is built offline and deterministically (fixed seed, tokenizer trained
in-process) into a folder laid out like a Hugging Face snapshot, then loaded with ``from_pretrained``.

Guarantees:
- ``ensure_tiny_model(path)`` is idempotent and safe to call from several processes at once: the
  folder is built in a temporary sibling and renamed into place, so a reader never sees half a model.
- Building twice gives byte-identical weights.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

# The pipelines drop this many tokens of the encoded system template before conditioning; the tiny
# tokenizer is trained so that the template prefix is exactly this long, as with the real one.
TEMPLATE_DROP_TOKENS = 64
SYSTEM_PREFIX = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining consistency "
    "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n"
)
# Qwen's special tokens, in Qwen's order (ids follow the trained vocabulary).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
MARKER = "tiny_model.json"
FORMAT_VERSION = 1
HIDDEN = 32


def _train_tokenizer():
    """A byte-level BPE with Qwen's pre-tokenizer whose system-prefix encoding is 64 tokens long."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Train on the template's text pieces as the encoder will see them (split at special tokens).
    pieces = [p for p in re.split(r"<\|[a-z_]+\|>", SYSTEM_PREFIX) if p]
    corpus = pieces * 4 + ["Make the sky blue and add clouds. Picture 1: turn it into winter, add snow."]

    def build(vocab_size: int) -> Tokenizer:
        tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        trainer = BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer=trainer)
        return tok

    # More merges never lengthen an encoding: walk the vocabulary size up to the exact length.
    base = len(SPECIAL_TOKENS) + 256
    for extra in range(0, 2000, 4):
        tok = build(base + extra)
        n = len(tok.encode(SYSTEM_PREFIX).ids)
        if n <= TEMPLATE_DROP_TOKENS:
            for step in range(extra - 3, extra + 1):
                tok = build(base + step)
                if len(tok.encode(SYSTEM_PREFIX).ids) == TEMPLATE_DROP_TOKENS:
                    return tok
            return tok
    raise RuntimeError("could not train a tokenizer with a 64-token system prefix")


def _build(folder: Path) -> None:
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline,
                           QwenImageTransformer2DModel)
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

    raw = _train_tokenizer()
    tokenizer = Qwen2Tokenizer(tokenizer_object=raw)
    ids = {t: raw.token_to_id(t) for t in SPECIAL_TOKENS}

    torch.manual_seed(0)
    text_config = {
        "vocab_size": raw.get_vocab_size(), "hidden_size": HIDDEN, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
    }
    vision_config = {
        "depth": 2, "hidden_size": HIDDEN, "intermediate_size": 64, "num_heads": 2,
        "out_hidden_size": HIDDEN, "fullatt_block_indexes": [1], "window_size": 112,
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=HIDDEN, axes_dims_rope=(4, 14, 14),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_shift=0.9, max_image_seq_len=8192,
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
    )
    pixels = 224 * 224
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=pixels),
        video_processor=Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=pixels),
        tokenizer=tokenizer,
    )
    pipe = QwenImageEditPlusPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        processor=processor, transformer=transformer,
    )
    pipe.save_pretrained(folder)
    (folder / MARKER).write_text(json.dumps({"format": FORMAT_VERSION, "what": "random tiny Qwen-Image-Edit-Plus"}))


def is_built(folder: str | os.PathLike) -> bool:
    marker = Path(folder) / MARKER
    try:
        return json.loads(marker.read_text()).get("format") == FORMAT_VERSION
    except (OSError, ValueError):
        return False


def ensure_tiny_model(folder: str | os.PathLike) -> Path:
    """Build the tiny model into ``folder`` unless a complete build of this format is already there."""
    folder = Path(folder).resolve()
    if is_built(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=folder.parent))
    try:
        _build(tmp)
        if folder.exists() and not is_built(folder):
            shutil.rmtree(folder, ignore_errors=True)  # an old or broken build
        try:
            os.rename(tmp, folder)
        except OSError:
            if not is_built(folder):  # lost a race to a build that is not usable: surface it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ensure_tiny_gguf(folder: str | os.PathLike, qtype: str = "Q8_0") -> Path:
    """The tiny model's transformer as a GGUF file of ``qtype`` (``gguf_files.WRITABLE``), written
    into ``<folder>/gguf/`` beside the tiny model (built first if it is not yet), as the published
    conversions lay their files out: the quantized weights under diffusers' names. Idempotent."""
    from safetensors.torch import load_file

    from . import gguf_files

    folder = ensure_tiny_model(folder)
    path = folder / "gguf" / f"tiny-transformer-{qtype}.gguf"
    if not path.is_file():
        weights = load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
        gguf_files.write(weights, path, qtype)
    return path


def random_lightning_lora(transformer, path: Path, rank: int = 4, seed: int = 0, scale: float = 0.5,
                          prefix: str = "", only: str | None = None, dtype=None, device: str = "cpu") -> Path:
    """A LoRA file in the Lightning LoRAs' key format with random values, for tests and benchmarks
    (no download): ``<layer>.lora_down.weight``, ``<layer>.lora_up.weight`` and ``<layer>.alpha`` for
    every linear layer of the transformer blocks, as the Lightning files have them.

    ``prefix`` renames the layers (e.g. ``single_transformer_blocks`` for a LoRA of another model).
    ``dtype``/``device``: where the random values are drawn (the GPU benchmark makes a full-size bf16
    one, about as large as the real Lightning files, on the GPU)."""
    import torch
    from safetensors.torch import save_file

    dtype = dtype or torch.float32
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


# --- inputs ---------------------------------------------------------------------------------


if __name__ == "__main__":
    import sys

    print(ensure_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "state/models/tiny"))
