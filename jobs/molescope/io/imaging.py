"""Decoding dermoscopy images to RGB arrays, with reason codes for the ones that cannot be used.

`decode_rgb(bytes) -> (H, W, 3) uint8` is the one decoder every stage uses (clean validates with it, featurize
feeds its output to the CNN), so an image that passes clean is an image featurize can read.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from molescope.core.registry import (
    REASON_IMAGE_CORRUPT,
    REASON_IMAGE_EMPTY,
    REASON_IMAGE_NOT_JPEG,
    REASON_IMAGE_TOO_SMALL,
)

JPEG_MAGIC = b"\xff\xd8\xff"
#: Modes holding more than 8 bits per sample; scaled down to 8-bit grayscale before RGB conversion.
WIDE_MODES: frozenset[str] = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
#: Divisor mapping a 16-bit sample (0..65535) onto 0..255.
SIXTEEN_TO_EIGHT_BITS = 256
#: Errors Pillow raises on undecodable content (DecompressionBombError is neither OSError nor ValueError).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageError(ValueError):
    """An image that cannot be used, with a quarantine reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """What clean records about a usable image: size after EXIF orientation, hash of the stored bytes."""

    width: int
    height: int
    sha256: str


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (L, LA, P, RGBA, CMYK, 16-bit) to 8-bit RGB, EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_MODES:
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((wide // SIXTEEN_TO_EIGHT_BITS).clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _decode(data: bytes | None) -> Image.Image:
    """The decoded 8-bit RGB Pillow image of `data`; ImageError when unusable."""
    if not data:
        raise ImageError(REASON_IMAGE_EMPTY, "zero bytes")
    if not data.startswith(JPEG_MAGIC):
        raise ImageError(REASON_IMAGE_NOT_JPEG, f"starts with {data[:4]!r}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image)
    except DECODE_ERRORS as exc:
        raise ImageError(REASON_IMAGE_CORRUPT, f"{type(exc).__name__}: {exc}") from exc


def decode_rgb(data: bytes | None) -> np.ndarray:
    """Decode JPEG bytes to an (H, W, 3) uint8 array, EXIF orientation applied.

    Grayscale, RGBA, CMYK and 16-bit images are converted to 8-bit RGB rather than rejected.
    Raises ImageError for empty, non-JPEG, truncated or corrupt content.
    """
    return np.asarray(_decode(data), dtype=np.uint8)


def decode_resized(data: bytes | None, size: int) -> np.ndarray:
    """`decode_rgb` then a bilinear resize to (size, size, 3), ignoring aspect ratio, in one pass.

    The same pixels as `backbones.resize_rgb(decode_rgb(data), size)` (what keras.utils.load_img with
    target_size does), without the round trip through numpy between the two steps: featurize calls this
    once per image, where it costs about as much as a small CNN's inference.
    """
    image = _decode(data)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def inspect_image(data: bytes | None, min_size: int) -> ImageInfo:
    """Fully decode `data` and describe it; raises ImageError if unusable or smaller than `min_size` px."""
    height, width, _ = decode_rgb(data).shape
    if min(width, height) < min_size:
        raise ImageError(REASON_IMAGE_TOO_SMALL, f"{width}x{height} below the {min_size}px minimum")
    return ImageInfo(width=width, height=height, sha256=hashlib.sha256(data).hexdigest())


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _thumbnail(data: bytes | None, size: int) -> Image.Image:
    image = _decode(data)
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return image


def thumbnail(data: bytes | None, size: int, quality: int = 80) -> bytes:
    """A JPEG of the image (EXIF orientation applied) whose longer side is at most `size`, aspect kept: small
    enough to embed a few hundred in one self-contained page. Raises ImageError like `decode_rgb`."""
    return _jpeg(_thumbnail(data, size), quality)


def overlay(data: bytes | None, heat: np.ndarray, size: int, alpha: float = 0.45, quality: int = 80) -> bytes:
    """`thumbnail` with the map `heat` (h × w, values in [0, 1], covering the whole image) blended over it as
    a navy → yellow → red heat map, stretched to the thumbnail (bilinear), at opacity `alpha`."""
    image = _thumbnail(data, size)
    levels = (np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    gray = Image.fromarray(levels, mode="L").resize(image.size, Image.Resampling.BILINEAR)
    colours = ImageOps.colorize(gray, black="#000080", white="#ff0000", mid="#ffff00")
    return _jpeg(Image.blend(image, colours, alpha), quality)
