"""The Qwen-Image-Edit(-2509/-2511) architecture as published, for building models without weights.

Two users: ``memplan`` builds the components on the ``meta`` device (shapes only, no memory) to count
what each profile needs, and ``bench/gpu_edit.py`` builds them with random weights on a GPU. Both
take the dimensions from here, so the plan and the benchmark describe the same model. Where a
preset's real files are on this machine, ``meta_components`` reads their configs instead.

Imports only torch, diffusers and transformers, lazily (the benchmark runs without pydantic or Ray).
"""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Dimensions:
    transformer: dict
    text: dict
    vision: dict
    vae: dict
    vocab_size: int = 152064
    extra_text: dict = field(default_factory=dict)


# Qwen2.5-VL-7B (the text encoder) and the 60-block, 20.4 B-parameter transformer of Qwen-Image-Edit-2509
# (2511 has the same shapes), from the published configs.
FULL = Dimensions(
    transformer=dict(num_layers=60, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584,
                     axes_dims_rope=(16, 56, 56)),
    text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                                      "rope_theta": 1e6}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                fullatt_block_indexes=[7, 15, 23, 31]),
    vae=dict(base_dim=96, dim_mult=[1, 2, 4, 4], num_res_blocks=2),
    extra_text={"max_position_embeddings": 128000},
)
# Toy sizes for the benchmark's --smoke run on CPU.
SMOKE = Dimensions(
    transformer=dict(num_layers=2, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32,
                     axes_dims_rope=(4, 14, 14)),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                      "rope_theta": 1e6}),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                fullatt_block_indexes=[1]),
    vae=dict(base_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=1),
    extra_text={"max_position_embeddings": 128000},
)


def text_encoder_config(dims: Dimensions, token_ids: dict[str, int] | None = None):
    """A ``Qwen2_5_VLConfig`` for these dimensions; ``token_ids`` maps Qwen's special tokens to ids."""
    from transformers import Qwen2_5_VLConfig

    ids = token_ids or {}
    special = {}
    if ids:
        special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                       vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text = {**dims.text, **dims.extra_text, "vocab_size": dims.vocab_size}
    if ids:
        text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config={**dims.vision, "window_size": 112, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        **special)


def build_components(dims: Dimensions, device, dtype, token_ids: dict[str, int] | None = None):
    """(transformer, text_encoder, vae) with freshly initialised weights of ``dtype`` on ``device``
    (``meta``: shapes only)."""
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = text_encoder_config(dims, token_ids)
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype on the device: no fp32 copy, no host RAM
    try:
        with torch.device(device):
            text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
            transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16,
                                                      **dims.transformer).eval()
            vae = AutoencoderKLQwenImage(z_dim=16, attn_scales=[], temperal_downsample=[False, True, True],
                                         **dims.vae).eval()
    finally:
        torch.set_default_dtype(saved)
    return transformer, text_encoder, vae


def local_folder(base: str) -> Path | None:
    """The folder holding ``base``'s files on this machine (a local folder, or a Hugging Face cache
    snapshot), or None. Never touches the network."""
    local = Path(base).expanduser()
    if (local / "model_index.json").is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id=base, filename="model_index.json")
    except Exception:  # not a repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def meta_transformer(folder: Path):
    """The transformer of the base in ``folder``, on the meta device (shapes, no memory)."""
    import torch
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        return QwenImageTransformer2DModel.from_config(QwenImageTransformer2DModel.load_config(folder / "transformer"))


def meta_components(folder: Path | None):
    """(transformer, text_encoder, vae) on the meta device in bf16: from ``folder``'s configs when
    given, else the published full-size dimensions."""
    import torch

    if folder is None:
        return build_components(FULL, "meta", torch.bfloat16)
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            transformer = QwenImageTransformer2DModel.from_config(
                QwenImageTransformer2DModel.load_config(folder / "transformer"))
            vae = AutoencoderKLQwenImage.from_config(AutoencoderKLQwenImage.load_config(folder / "vae"))
            text_encoder = Qwen2_5_VLForConditionalGeneration._from_config(
                Qwen2_5_VLConfig.from_pretrained(folder / "text_encoder"))
    finally:
        torch.set_default_dtype(saved)
    return transformer.eval(), text_encoder.eval(), vae.eval()
