"""The label-preserving image augmentation of upsample's `augment` strategy (new JPEGs, featurized like the
originals). Fine-tuning augments in TensorFlow ops instead (`molescope.models.finetune_data.augment`).

Flips and 90° turns are free for dermoscopy (no canonical orientation); a small rotation, scale and
brightness/contrast change stay within what a different photograph of the same lesion looks like, and hue
is untouched since colour is a diagnostic cue. Corners uncovered by the rotation or a zoom-out are filled
with the image's median border colour (skin), not black. Every draw comes from the caller's generator, so
a seed reproduces the transform.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, ImageEnhance

from molescope.io.imaging import decode_rgb

MAX_ROTATION_DEG = 15.0
SCALE_RANGE = (0.9, 1.1)
BRIGHTNESS_RANGE = (0.9, 1.1)
CONTRAST_RANGE = (0.9, 1.1)
JPEG_QUALITY = 95


def border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the image border."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    median = np.median(border, axis=0)
    return int(median[0]), int(median[1]), int(median[2])


def _fit(image: Image.Image, width: int, height: int, fill: tuple[int, int, int]) -> Image.Image:
    """Centre-crop (zoom in) or centre-pad (zoom out) back to width x height."""
    canvas = Image.new("RGB", (width, height), fill)
    canvas.paste(image, ((width - image.size[0]) // 2, (height - image.size[1]) // 2))
    return canvas


def augment_image(image: Image.Image, fill: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    """One random transform of an RGB image (see the module docstring); a 90° turn swaps width and height."""
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    image = image.rotate(90.0 * int(rng.integers(0, 4)), expand=True)
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    scale = rng.uniform(*SCALE_RANGE)
    width, height = image.size
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
    scaled = image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR
    )
    image = _fit(scaled, width, height, fill)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(*BRIGHTNESS_RANGE))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(*CONTRAST_RANGE))


def augment_rgb(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`augment_image` of an (H, W, 3) uint8 array (fine-tuning batches)."""
    return np.asarray(augment_image(Image.fromarray(rgb), border_colour(rgb), rng), dtype=np.uint8)


def image_rng(seed: int, key: str) -> np.random.Generator:
    """A generator drawn from (seed, key); crc32, not hash(): Python's str hash is salted per process."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def augment_jpeg(data: bytes, seed: int, image_id: str) -> bytes:
    """One transform of a JPEG, drawn from (seed, the new image's id); JPEG out (upsample's new images)."""
    rgb = decode_rgb(data)
    image = augment_image(Image.fromarray(rgb), border_colour(rgb), image_rng(seed, image_id))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
