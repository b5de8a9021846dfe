"""Generate a synthetic dermoscopy-like batch in HAM10000 layout (metadata CSV + JPEGs), no Spark needed.

The batch has HAM10000's class imbalance, 1-4 images per lesion, and lesions whose colour, size, border
irregularity and texture depend on the diagnosis (with per-lesion randomness), so a CNN-feature + linear
classifier learns something. Images go to `HAM10000_images_part_1/` and `_part_2/` like the original
distributions. A few rows have an empty age or sex 'unknown' (the study's rules drop them), and
`--with-defects` adds deliberately bad files (zero-byte, truncated JPEG, PNG named .jpg) that the metadata
lists.
The same seed gives byte-identical files.

Lesion ids are drawn so that, under clean's default split (seed 42, test fraction 0.2), every class has
lesions on both sides.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from molescope.core.constants import CLASSES, METADATA_COLUMNS
from molescope.core.registry import DEFAULT_SEED as SPLIT_SEED
from molescope.core.registry import DEFAULT_TEST_FRACTION, DX_TYPE_VALUES, UNKNOWN_VALUE
from molescope.core.settings import CliSettings, option
from molescope.intake.split import lesion_unit

log = logging.getLogger(__name__)

METADATA_NAME = "HAM10000_metadata.csv"
IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
#: HAM10000's class shares (10,015 images).
CLASS_SHARES: dict[str, float] = {
    "nv": 0.669,
    "mel": 0.111,
    "bkl": 0.110,
    "bcc": 0.051,
    "akiec": 0.033,
    "vasc": 0.014,
    "df": 0.011,
}
MIN_LESIONS_PER_CLASS = 4
MAX_IMAGES_PER_LESION = 4
DEFAULT_IMAGES = 300
DEFAULT_WIDTH = 600
DEFAULT_HEIGHT = 450
DEFAULT_SEED = 0
JPEG_QUALITY = 90
#: Fraction of rows given an empty age, and (separately) sex 'unknown'.
MISSING_AGE_SHARE = 0.01
UNKNOWN_SEX_SHARE = 0.01
FIRST_IMAGE_NUMBER = 24306  # HAM10000's ISIC ids start at ISIC_0024306
LESION_ID_SPACE = 10_000_000
#: The localizations synth draws from: the common HAM10000 ones (every one in the registry's vocabulary).
LOCALIZATIONS = (
    "back",
    "lower extremity",
    "trunk",
    "upper extremity",
    "abdomen",
    "face",
    "chest",
    UNKNOWN_VALUE,
)
#: Texture noise is drawn on a coarse grid and upsampled, which makes it blotchy rather than per-pixel.
NOISE_GRID = 24
#: Images are drawn at 1/DRAW_DOWNSCALE of the output size and upsampled: 4x fewer pixels to compute, and
#: the lesion is smooth anyway (JPEG would discard most per-pixel detail).
DRAW_DOWNSCALE = 2
#: Lesion radii in LOOKS are relative to the short side; this enlarges them all to dermoscopy-like framing.
RADIUS_SCALE = 1.4


@dataclass(frozen=True)
class Look:
    """How a diagnosis looks: lesion RGB, relative radius, border irregularity, texture, dark/blue patches."""

    rgb: tuple[int, int, int]
    radius: tuple[float, float]
    irregularity: float
    texture: float
    patches: float
    ring: bool = False


LOOKS: dict[str, Look] = {
    "nv": Look((120, 75, 50), (0.22, 0.32), 0.04, 0.10, 0.0),
    "mel": Look((60, 35, 30), (0.30, 0.42), 0.22, 0.35, 0.5),
    "bkl": Look((165, 125, 90), (0.22, 0.34), 0.10, 0.45, 0.0),
    "bcc": Look((205, 140, 140), (0.18, 0.28), 0.12, 0.25, 0.2),
    "akiec": Look((190, 90, 80), (0.20, 0.30), 0.16, 0.55, 0.0),
    "vasc": Look((150, 30, 60), (0.10, 0.18), 0.03, 0.08, 0.0),
    "df": Look((140, 95, 70), (0.14, 0.22), 0.06, 0.15, 0.0, ring=True),
}


@dataclass(frozen=True)
class Settings(CliSettings):
    out: str = option(help="output folder (local path)")
    images: int = option(DEFAULT_IMAGES, type=int, help="number of metadata rows")
    width: int = option(DEFAULT_WIDTH, type=int, help="image width, px")
    height: int = option(DEFAULT_HEIGHT, type=int, help="image height, px")
    seed: int = option(DEFAULT_SEED, type=int, help="the same seed gives byte-identical files")
    with_defects: bool = option(False, action="store_true", help="add zero-byte/truncated/PNG files")


@dataclass(frozen=True)
class Row:
    lesion_id: str
    image_id: str
    dx: str
    dx_type: str
    age: str
    sex: str
    localization: str


def images_per_class(total: int) -> dict[str, int]:
    """Images per class: HAM10000's shares, at least MIN_LESIONS_PER_CLASS each, nv absorbing the rounding."""
    counts = {dx: max(round(share * total), MIN_LESIONS_PER_CLASS) for dx, share in CLASS_SHARES.items()}
    counts["nv"] = total - sum(n for dx, n in counts.items() if dx != "nv")
    if counts["nv"] < MIN_LESIONS_PER_CLASS:
        raise ValueError(f"--images {total} is too few for {len(CLASSES)} classes")
    return counts


def lesion_sizes(n_images: int, rng: np.random.Generator) -> list[int]:
    """Split n_images into lesions of 1-4 images, with at least MIN_LESIONS_PER_CLASS lesions."""
    n_lesions = max(MIN_LESIONS_PER_CLASS, int(np.ceil(n_images / 2)))
    n_lesions = min(n_lesions, n_images)
    sizes = np.ones(n_lesions, dtype=int)
    for _ in range(n_images - n_lesions):
        open_lesions = np.flatnonzero(sizes < MAX_IMAGES_PER_LESION)
        sizes[rng.choice(open_lesions)] += 1
    return sizes.tolist()


def lesion_ids(count: int, rng: np.random.Generator, used: set[str]) -> list[str]:
    """Fresh lesion ids, the first two forced onto the test and train sides of clean's default split."""
    wanted_sides = [True, False] if count >= 2 else []
    chosen: list[str] = []
    while len(chosen) < count:
        candidate = f"HAM_{int(rng.integers(LESION_ID_SPACE)):07d}"
        if candidate in used:
            continue
        if len(chosen) < len(wanted_sides):
            is_test = lesion_unit(SPLIT_SEED, candidate) < DEFAULT_TEST_FRACTION
            if is_test != wanted_sides[len(chosen)]:
                continue
        used.add(candidate)
        chosen.append(candidate)
    return chosen


def plan_rows(settings: Settings, rng: np.random.Generator) -> list[tuple[Row, int]]:
    """Metadata rows with a per-lesion seed for drawing; shuffled so lesions are spread across the file."""
    planned: list[tuple[Row, int]] = []
    used: set[str] = set()
    for dx, n_images in images_per_class(settings.images).items():
        sizes = lesion_sizes(n_images, rng)
        for lesion_id, size in zip(lesion_ids(len(sizes), rng, used), sizes, strict=True):
            lesion_seed = int(rng.integers(2**31))
            age = f"{float(rng.integers(2, 18) * 5):.1f}"
            sex = str(rng.choice(["male", "female"]))
            localization = str(rng.choice(LOCALIZATIONS))
            dx_type = str(rng.choice(DX_TYPE_VALUES))
            for _ in range(size):
                row = Row(lesion_id, "", dx, dx_type, age, sex, localization)
                planned.append((row, lesion_seed))
    order = rng.permutation(len(planned))
    planned = [planned[i] for i in order]
    # At least one of each, on distinct rows, so the clean rules always have work.
    n_missing_age = max(1, round(MISSING_AGE_SHARE * len(planned)))
    n_unknown_sex = max(1, round(UNKNOWN_SEX_SHARE * len(planned)))
    picked = rng.choice(len(planned), size=n_missing_age + n_unknown_sex, replace=False)
    missing_age, unknown_sex = set(picked[:n_missing_age].tolist()), set(picked[n_missing_age:].tolist())
    numbered = []
    for number, (row, lesion_seed) in enumerate(planned):
        age = "" if number in missing_age else row.age
        sex = UNKNOWN_VALUE if number in unknown_sex else row.sex
        image_id = f"ISIC_{FIRST_IMAGE_NUMBER + number:07d}"
        fields = {**row.__dict__, "image_id": image_id, "age": age, "sex": sex}
        numbered.append((Row(**fields), lesion_seed))
    return numbered


def _noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Smooth noise in [-1, 1], shape (height, width)."""
    coarse = rng.uniform(0, 255, size=(NOISE_GRID, NOISE_GRID)).astype(np.uint8)
    smooth = Image.fromarray(coarse, mode="L").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float32) / 127.5 - 1.0


def draw_lesion(dx: str, lesion_seed: int, image_seed: int, width: int, height: int) -> np.ndarray:
    """Draw one (height, width, 3) uint8 image: skin background with a dx-dependent lesion blob."""
    small = _draw(
        dx, lesion_seed, image_seed, max(width // DRAW_DOWNSCALE, 1), max(height // DRAW_DOWNSCALE, 1)
    )
    resized = Image.fromarray(small, mode="RGB").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _draw(dx: str, lesion_seed: int, image_seed: int, width: int, height: int) -> np.ndarray:
    look = LOOKS[dx]
    lesion = np.random.default_rng(lesion_seed)  # shared by all images of a lesion
    view = np.random.default_rng(image_seed)  # differs per image: position, lighting, noise
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = float(min(width, height))
    cx = width / 2 + view.normal(0, 0.05) * width
    cy = height / 2 + view.normal(0, 0.05) * height
    dx_, dy_ = (xx - cx) / scale, (yy - cy) / scale
    rho, theta = np.hypot(dx_, dy_), np.arctan2(dy_, dx_)
    radius = RADIUS_SCALE * lesion.uniform(*look.radius)
    border = np.ones_like(theta)
    for k in range(2, 7):
        border += (
            look.irregularity * lesion.normal(0, 1) / k * np.cos(k * theta + lesion.uniform(0, 2 * np.pi))
        )
    edge = 0.01 + look.irregularity * 0.05
    mask = 1.0 / (1.0 + np.exp(np.clip((rho - radius * border) / edge, -30, 30)))

    skin = np.array([224, 180, 150], dtype=np.float32) * lesion.uniform(0.8, 1.05)
    shading = 1.0 - 0.25 * rho + 0.03 * _noise(view, width, height)
    background = skin[None, None, :] * shading[..., None]
    colour = np.array(look.rgb, dtype=np.float32) * lesion.uniform(0.85, 1.15, size=3)
    texture = 1.0 + look.texture * _noise(view, width, height)
    body = colour[None, None, :] * texture[..., None]
    if look.patches:
        blotch = np.clip(_noise(lesion, width, height), 0, 1)[..., None] * look.patches
        body = body * (1 - blotch) + np.array([70, 80, 110], dtype=np.float32) * blotch
    if look.ring:
        centre = np.exp(-((rho / (radius * 0.35)) ** 2))[..., None]
        body = body * (1 - centre) + np.array([235, 225, 215], dtype=np.float32) * centre
    pixels = background * (1 - mask[..., None]) + body * mask[..., None]
    pixels += view.normal(0, 4, size=pixels.shape).astype(np.float32)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def defect_files(width: int, height: int) -> dict[str, bytes]:
    """Deliberately bad image contents by kind: zero-byte, truncated JPEG, PNG content named .jpg."""
    good = jpeg_bytes(np.full((height, width, 3), 128, dtype=np.uint8))
    png = io.BytesIO()
    Image.new("RGB", (width, height), (128, 90, 70)).save(png, format="PNG")
    return {"zero_byte": b"", "truncated": good[: len(good) // 2], "png": png.getvalue()}


def write_metadata(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        for row in rows:
            writer.writerow([getattr(row, column) for column in METADATA_COLUMNS])


def run(settings: Settings) -> dict:
    """Write the batch to settings.out and return a summary."""
    started = time.monotonic()
    rng = np.random.default_rng(settings.seed)
    planned = plan_rows(settings, rng)
    out = Path(settings.out)
    for folder in IMAGE_DIRS:
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = [row for row, _ in planned]
    for index, (row, lesion_seed) in enumerate(planned):
        pixels = draw_lesion(
            row.dx, lesion_seed, settings.seed * 1_000_003 + index, settings.width, settings.height
        )
        folder = IMAGE_DIRS[index % len(IMAGE_DIRS)]
        (out / folder / f"{row.image_id}.jpg").write_bytes(jpeg_bytes(pixels))
    defects: dict[str, str] = {}
    if settings.with_defects:
        first = FIRST_IMAGE_NUMBER + len(rows)
        for offset, (kind, content) in enumerate(defect_files(settings.width, settings.height).items()):
            image_id = f"ISIC_{first + offset:07d}"
            (out / IMAGE_DIRS[offset % len(IMAGE_DIRS)] / f"{image_id}.jpg").write_bytes(content)
            rows.append(Row(f"HAM_{9_000_000 + offset:07d}", image_id, "nv", "histo", "50.0", "male", "back"))
            defects[image_id] = kind
    write_metadata(out / METADATA_NAME, rows)
    per_class = {dx: sum(1 for r in rows if r.dx == dx) for dx in CLASSES}
    summary = {
        "out": str(out),
        "rows": len(rows),
        "images": len(planned),
        "lesions": len({r.lesion_id for r in rows}),
        "per_class": per_class,
        "missing_age": sum(1 for r in rows if not r.age),
        "unknown_sex": sum(1 for r in rows if r.sex == UNKNOWN_VALUE),
        "defects": defects,
        "seconds": round(time.monotonic() - started, 2),
    }
    log.info("synth wrote %d rows to %s in %.1fs", len(rows), out, summary["seconds"])
    return summary
