"""Decoding dermoscopy images to RGB arrays, with reason codes for the ones that cannot be used."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Reason codes shared with the quarantine table.
REASON_EMPTY = "image_empty"
REASON_NOT_JPEG = "image_not_jpeg"
REASON_CORRUPT = "image_corrupt"
REASON_TOO_SMALL = "image_too_small"

JPEG_MAGIC = b"\xff\xd8\xff"


class ImageError(ValueError):
    """An image that cannot be used, with a quarantine reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_rgb(data: bytes | None) -> np.ndarray:
    """Decode JPEG bytes to an (H, W, 3) uint8 array, EXIF orientation applied.

    Grayscale, RGBA, CMYK and 16-bit images are converted to 8-bit RGB rather than rejected.
    Raises ImageError for empty, non-JPEG, truncated or corrupt content.
    """
    if not data:
        raise ImageError(REASON_EMPTY, "zero bytes")
    if not data.startswith(JPEG_MAGIC):
        raise ImageError(REASON_NOT_JPEG, f"starts with {data[:4]!r}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                image = image.point(lambda v: v / 256).convert("L")
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageError(REASON_CORRUPT, str(exc)) from exc
    return np.asarray(rgb, dtype=np.uint8)
