"""Upload checks and decoding, shared by the ingress (to refuse bad input early) and the worker.

``check_upload`` reads the header before decoding any pixel, so a decompression bomb (a small file
declaring a huge canvas) is refused without allocating it. Every refusal is an ``InvalidImage`` (400)
whose sentence follows the contract's wording and says what to fix. ``check_and_decode`` keeps the
check's decode as the job's input (RGB pixels, EXIF orientation applied), so an upload is decoded
once: in the ingress, not again in the worker (``to_rgb`` takes either form).
"""

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImage

ALLOWED_FORMATS = ("JPEG", "PNG")
MIN_SIDE = 16  # the pipelines floor sides to multiples of 16; smaller inputs crash them
MB = 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 10 * MB
    max_side: int = 2048


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def _fmt_mb(n: int) -> str:
    return f"{n / MB:.1f}MB"


def _limit_mb(n: int) -> str:
    return f"{n / MB:g}MB"


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML document"
    if head.startswith(b"<?xml") or b"<svg" in head:
        return "an SVG/XML document"
    try:
        data[:512].decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not an image Pillow recognises"


def _invalid(what: str) -> InvalidImage:
    return InvalidImage(f"Invalid image format: {what}. Must be JPEG or PNG")


def check_size(size: int, limits: UploadLimits) -> None:
    """Refuse an upload by its size alone (the ingress checks this before reading the file into memory)."""
    if size > limits.max_bytes:
        raise InvalidImage(f"Image too large ({_fmt_mb(size)}). Maximum {_limit_mb(limits.max_bytes)} allowed.")


def check_upload(data: bytes, limits: UploadLimits) -> ImageInfo:
    """Validate an upload fully (size, format, dimensions, decodability) or raise ``InvalidImage``."""
    return _checked(data, limits, keep=False)[0]


def check_and_decode(data: bytes, limits: UploadLimits) -> tuple[ImageInfo, np.ndarray]:
    """``check_upload``, and the pixels that check decoded as the job will use them: an RGB
    ``uint8`` array (height x width x 3) with the EXIF orientation applied, as ``decode`` gives."""
    return _checked(data, limits, keep=True)


def _checked(data: bytes, limits: UploadLimits, keep: bool):
    if not data:
        raise _invalid("the file is empty")
    check_size(len(data), limits)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _invalid(f"the file is {_sniff(data)}") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise InvalidImage("Image dimensions too large. Maximum "
                               f"{limits.max_side}x{limits.max_side} pixels.") from None
        except Exception as exc:  # Pillow raises many types for hostile headers
            raise _invalid(f"the file could not be read ({type(exc).__name__})") from None
        with im:
            if im.format not in ALLOWED_FORMATS:
                raise _invalid(im.format or "unknown format")
            width, height = im.size
            if width > limits.max_side or height > limits.max_side:
                raise InvalidImage(f"Image dimensions too large ({width}x{height}). "
                                   f"Maximum {limits.max_side}x{limits.max_side} pixels.")
            if width < MIN_SIDE or height < MIN_SIDE:
                raise InvalidImage(f"Image dimensions too small ({width}x{height}). "
                                   f"Minimum {MIN_SIDE}x{MIN_SIDE} pixels.")
            if getattr(im, "is_animated", False):
                raise _invalid(f"an animated {im.format}; send a still image")
            try:
                im.load()
            except Exception:
                raise _invalid("the file is truncated or corrupt") from None
            info = ImageInfo(im.format, width, height)
            return info, (np.asarray(_rgb(im)) if keep else None)


def _rgb(im: Image.Image) -> Image.Image:
    return ImageOps.exif_transpose(im).convert("RGB")


def decode(data: bytes) -> Image.Image:
    """An RGB image with its EXIF orientation applied (the input must have passed ``check_upload``)."""
    with Image.open(io.BytesIO(data)) as im:
        return _rgb(im)


def to_rgb(upload) -> Image.Image:
    """A job input as the pipeline takes it: from the upload's bytes (decoded here), or from the
    pixels ``check_and_decode`` made of them."""
    if isinstance(upload, (bytes, bytearray, memoryview)):
        return decode(bytes(upload))
    return Image.fromarray(np.asarray(upload, dtype=np.uint8))


def encode_png(image: Image.Image, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
