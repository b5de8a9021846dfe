"""molescope.io.imaging: decoding to RGB, normalising odd modes, and reason codes for unusable bytes."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from molescope.core.registry import (
    REASON_IMAGE_CORRUPT,
    REASON_IMAGE_EMPTY,
    REASON_IMAGE_NOT_JPEG,
    REASON_IMAGE_TOO_SMALL,
)
from molescope.io import imaging
from molescope.io.imaging import (
    ImageError,
    decode_resized,
    decode_rgb,
    inspect_image,
    to_rgb,
)
from tests.conftest import HAM10000, require

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6


def jpeg(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_args)
    return buffer.getvalue()


def test_rgb_jpeg_decodes_to_uint8_hwc():
    array = decode_rgb(jpeg(Image.new("RGB", (40, 30), (200, 100, 50))))
    assert array.shape == (30, 40, 3)
    assert array.dtype == np.uint8
    assert abs(int(array[15, 20, 0]) - 200) <= 3


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_become_rgb(mode):
    assert decode_rgb(jpeg(Image.new(mode, (40, 30)))).shape == (30, 40, 3)


def test_exif_rotation_is_applied():
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    array = decode_rgb(jpeg(Image.new("RGB", (40, 30)), exif=exif))
    assert array.shape == (40, 30, 3)


@pytest.mark.parametrize("size", [(40, 30), (24, 24)])
def test_decode_resized_equals_decode_then_resize(size):
    from molescope.features.backbones import resize_rgb

    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    for data in (jpeg(noisy), jpeg(noisy, exif=exif), jpeg(noisy.convert("L"))):
        one_pass = decode_resized(data, 24)
        assert one_pass.shape == (24, 24, 3) and one_pass.dtype == np.uint8
        np.testing.assert_array_equal(one_pass, resize_rgb(decode_rgb(data), 24))
    with pytest.raises(ImageError):
        decode_resized(b"", 24)


def test_rgba_and_16_bit_images_are_normalised():
    rgba = to_rgb(Image.new("RGBA", (8, 6), (10, 20, 30, 128)))
    assert rgba.mode == "RGB"
    assert rgba.getpixel((0, 0)) == (10, 20, 30)
    wide = Image.fromarray(np.full((6, 8), 51200, dtype=np.uint16))
    assert wide.mode.startswith("I;16")
    assert to_rgb(wide).getpixel((0, 0)) == (200, 200, 200)


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", REASON_IMAGE_EMPTY),
        (None, REASON_IMAGE_EMPTY),
        (png_bytes(), REASON_IMAGE_NOT_JPEG),
        (jpeg(Image.new("RGB", (64, 48)))[:200], REASON_IMAGE_CORRUPT),
        (b"\xff\xd8\xff" + b"garbage" * 20, REASON_IMAGE_CORRUPT),
    ],
    ids=["zero-bytes", "none", "png", "truncated", "garbage"],
)
def test_unusable_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageError) as caught:
        decode_rgb(data)
    assert caught.value.reason == reason


def test_inspect_records_size_and_hash_of_the_original_bytes():
    data = jpeg(Image.new("RGB", (40, 30)))
    info = inspect_image(data, min_size=30)
    assert (info.width, info.height) == (40, 30)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_inspect_rejects_images_below_the_minimum_size():
    with pytest.raises(ImageError) as caught:
        inspect_image(jpeg(Image.new("RGB", (40, 30))), min_size=31)
    assert caught.value.reason == REASON_IMAGE_TOO_SMALL


def test_overlay_reddens_where_the_map_is_hot_and_keeps_the_thumbnail_size():
    data = next(iter(sorted(require(HAM10000 / "images").glob("*.jpg")))).read_bytes()
    heat = np.zeros((7, 7))
    heat[:, :3] = 1.0  # the left three sevenths
    plain = np.asarray(Image.open(io.BytesIO(imaging.thumbnail(data, 160))).convert("RGB"), dtype=float)
    blended = Image.open(io.BytesIO(imaging.overlay(data, heat, 160)))
    assert blended.format == "JPEG" and blended.size == (160, 120)
    shift = np.asarray(blended.convert("RGB"), dtype=float) - plain
    left, right = shift[:, :50], shift[:, -50:]
    # Hot: towards red (255, 0, 0); cold: towards navy (0, 0, 128). At opacity 0.45 the red channels of the
    # two sides part by about 0.45 * 255 and the blue ones by about 0.45 * 128, whatever the lesion's colours.
    assert left[..., 0].mean() - right[..., 0].mean() > 80
    assert right[..., 2].mean() - left[..., 2].mean() > 30
    with pytest.raises(ImageError):
        imaging.overlay(b"", heat, 160)
