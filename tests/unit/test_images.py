"""Upload checks (``serve_app.images``): the contract's sentences for bad files, bombs refused
unread, EXIF orientation and colour modes normalised."""

import io

import pytest
from PIL import Image

from serve_app.errors import InvalidImage
from serve_app.images import MB, UploadLimits, check_upload, decode
from tests.helpers import bomb_png

LIMITS = UploadLimits(max_bytes=10 * MB, max_side=2048)


def png(w=64, h=48, color=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(w=64, h=48, exif_orientation=None):
    buf = io.BytesIO()
    im = Image.new("RGB", (w, h), (10, 200, 10))
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(buf, "JPEG", exif=exif)
    else:
        im.save(buf, "JPEG")
    return buf.getvalue()


def refused(data) -> str:
    with pytest.raises(InvalidImage) as err:
        check_upload(data, LIMITS)
    assert err.value.status_code == 400
    return err.value.detail


def test_accepts_png_and_jpeg():
    assert check_upload(png(), LIMITS).format == "PNG"
    assert check_upload(jpeg(), LIMITS).format == "JPEG"


def test_contract_messages():
    assert refused(png(3000, 3000)) == "Image dimensions too large (3000x3000). Maximum 2048x2048 pixels."
    big = b"\x89PNG" + b"\0" * int(15.2 * MB)
    assert refused(big) == "Image too large (15.2MB). Maximum 10MB allowed."
    gif = io.BytesIO()
    Image.new("RGB", (32, 32)).save(gif, "GIF")
    assert refused(gif.getvalue()) == "Invalid image format: GIF. Must be JPEG or PNG"


@pytest.mark.parametrize("data,words", [
    (b"", "empty"),
    (b"<html><body>not a picture</body></html>", "HTML"),
    (b"just some text\n", "text"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
])
def test_non_images_are_named(data, words):
    detail = refused(data)
    assert detail.startswith("Invalid image format:") and words in detail and detail.endswith("Must be JPEG or PNG")


def test_truncated_file():
    data = jpeg(512, 512)
    assert "truncated or corrupt" in refused(data[: len(data) // 2])


def test_decompression_bomb_refused_without_decoding():
    detail = refused(bomb_png(30000, 30000))
    assert detail.startswith("Image dimensions too large")
    assert refused(bomb_png(4000, 100)) == "Image dimensions too large (4000x100). Maximum 2048x2048 pixels."


def test_too_small():
    assert refused(png(8, 8)) == "Image dimensions too small (8x8). Minimum 16x16 pixels."


def test_exif_orientation_applied():
    im = decode(jpeg(64, 32, exif_orientation=6))
    assert im.size == (32, 64) and im.mode == "RGB"


def test_modes_become_rgb():
    buf = io.BytesIO()
    Image.new("RGBA", (20, 20), (1, 2, 3, 0)).save(buf, "PNG")
    assert decode(buf.getvalue()).mode == "RGB"


@pytest.mark.parametrize("data", [jpeg(64, 32, exif_orientation=6), png(40, 24), jpeg(50, 30)],
                         ids=["jpeg-rotated", "png", "jpeg"])
def test_the_checks_decode_is_the_jobs_input(data):
    """The pixels the ingress keeps from its check are exactly what the worker would decode."""
    import numpy as np

    from serve_app.images import check_and_decode, to_rgb

    info, pixels = check_and_decode(data, LIMITS)
    assert info == check_upload(data, LIMITS) and pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert np.array_equal(pixels, np.asarray(decode(data)))
    assert np.array_equal(np.asarray(to_rgb(pixels)), np.asarray(to_rgb(data)))
