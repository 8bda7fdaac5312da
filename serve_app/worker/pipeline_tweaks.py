"""Small adjustments to the diffusers Qwen-Image-Edit pipelines, shared by the engine and the GPU
benchmark. Imports only diffusers (lazily): the benchmark runs where pydantic and Ray are absent.
"""

import contextlib
import logging

log = logging.getLogger(__name__)
# Fastest first; each is tried only on CUDA and kept if the transformer accepts it.
ATTENTION_BACKENDS = ("_flash_3_hub", "_flash_3", "flash", "_native_cudnn", "native")


@contextlib.contextmanager
def working_area(area: int):
    """The Plus pipeline encodes references at a fixed module-level area; scope ours to one call."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus

    saved = plus.VAE_IMAGE_SIZE
    plus.VAE_IMAGE_SIZE = area
    try:
        yield
    finally:
        plus.VAE_IMAGE_SIZE = saved


def set_fastest_attention(transformer, wanted: str = "auto") -> str:
    """Set ``wanted`` (or, for ``auto``, the first backend that loads) on a CUDA transformer; returns
    the backend in use. A backend that is not installed or not supported on this GPU is skipped."""
    if wanted == "native":
        return "native"
    for name in ATTENTION_BACKENDS if wanted == "auto" else (wanted,):
        try:
            transformer.set_attention_backend(name)
            log.info("[ModelWorker] attention backend: %s", name)
            return name
        except Exception as exc:
            log.info("[ModelWorker] attention backend %s unavailable: %s", name, type(exc).__name__)
    return "native"
