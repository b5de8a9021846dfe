"""molescope synth: HAM10000 layout, class mix, determinism, defects, and images that differ by class."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from molescope.core.constants import CLASSES, METADATA_COLUMNS
from molescope.core.registry import DEFAULT_SEED, DEFAULT_TEST_FRACTION
from molescope.intake.split import lesion_unit
from molescope.intake.synth import IMAGE_DIRS, METADATA_NAME, Settings, draw_lesion, images_per_class, run

SMALL = {"width": 96, "height": 72}


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / METADATA_NAME).open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "batch"
    summary = run(Settings(out=str(out), images=120, seed=7, with_defects=True, **SMALL))
    return out, summary


def test_layout_and_metadata_columns(batch):
    out, summary = batch
    rows = read_rows(out)
    assert list(rows[0]) == list(METADATA_COLUMNS)
    assert len(rows) == summary["rows"] == 120 + 3
    files = {p.stem: p for folder in IMAGE_DIRS for p in (out / folder).glob("*.jpg")}
    assert {r["image_id"] for r in rows} == set(files)
    assert all(list((out / folder).glob("*.jpg")) for folder in IMAGE_DIRS)
    assert all(r["lesion_id"].startswith("HAM_") and len(r["lesion_id"]) == 11 for r in rows)
    assert all(r["age"] == "" or r["age"].endswith(".0") for r in rows)


def test_class_mix_is_imbalanced_with_every_class_on_both_split_sides(batch):
    out, _ = batch
    rows = read_rows(out)[:120]
    counts = {dx: sum(r["dx"] == dx for r in rows) for dx in CLASSES}
    assert counts["nv"] > 0.5 * len(rows)
    assert counts == images_per_class(120)
    for dx in CLASSES:
        lesions = {r["lesion_id"] for r in rows if r["dx"] == dx}
        sides = {lesion_unit(DEFAULT_SEED, lesion) < DEFAULT_TEST_FRACTION for lesion in lesions}
        assert len(lesions) >= 4, dx
        assert sides == {True, False}, dx
    per_lesion: dict[str, int] = {}
    for r in rows:
        per_lesion[r["lesion_id"]] = per_lesion.get(r["lesion_id"], 0) + 1
    assert max(per_lesion.values()) <= 4
    assert max(per_lesion.values()) > 1


def test_rows_for_the_clean_rules_and_defects(batch):
    out, summary = batch
    rows = read_rows(out)
    assert summary["missing_age"] == sum(r["age"] == "" for r in rows) >= 1
    assert summary["unknown_sex"] == sum(r["sex"] == "unknown" for r in rows) >= 1
    sizes = {
        kind: next(out.rglob(f"{image_id}.jpg")).read_bytes() for image_id, kind in summary["defects"].items()
    }
    assert sizes["zero_byte"] == b""
    assert sizes["png"].startswith(b"\x89PNG")
    assert sizes["truncated"].startswith(b"\xff\xd8\xff")
    assert not sizes["truncated"].endswith(b"\xff\xd9")


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = run(Settings(out=str(tmp_path / "a"), images=30, seed=3, **SMALL))
    second = run(Settings(out=str(tmp_path / "b"), images=30, seed=3, **SMALL))
    assert first["per_class"] == second["per_class"]
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    other = run(Settings(out=str(tmp_path / "c"), images=30, seed=4, **SMALL))
    assert (tmp_path / "c" / METADATA_NAME).read_bytes() != (tmp_path / "a" / METADATA_NAME).read_bytes()
    assert other["rows"] == 30


def test_default_size_is_600x450(tmp_path):
    run(Settings(out=str(tmp_path), images=28))
    image = Image.open(next(tmp_path.rglob("*.jpg")))
    assert image.size == (600, 450)
    assert image.format == "JPEG"


def test_classes_look_different():
    """Mean colour inside the lesion differs between classes more than between lesions of one class."""

    def centre_rgb(dx: str, lesion_seed: int) -> np.ndarray:
        pixels = draw_lesion(dx, lesion_seed, lesion_seed + 1, 120, 90).astype(float)
        return pixels[35:55, 50:70].reshape(-1, 3).mean(axis=0)

    means = {dx: np.mean([centre_rgb(dx, s) for s in range(4)], axis=0) for dx in CLASSES}
    assert np.linalg.norm(means["mel"] - means["nv"]) > 20
    assert np.linalg.norm(means["vasc"] - means["bkl"]) > 20
    assert means["mel"].sum() < means["nv"].sum() < means["bkl"].sum()
