"""molescope.intake.eda: clean's EDA counts and figures on real HAM10000 metadata, parsed as clean parses it.

The expected counts come from reading the same CSV with the csv module, not from a run of eda; the figures
are decoded and their bars measured (height per class, red for malignant classes, blue for the others).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from molescope.core.constants import CLASSES, MALIGNANT, METADATA_COLUMNS
from molescope.core.registry import UNKNOWN_VALUE
from molescope.intake import eda
from molescope.intake.landed import read_metadata_csv
from molescope.intake.metadata import parse_metadata
from tests.conftest import HAM10000, require

COLOURS = {"red": "tab:red", "blue": "tab:blue"}
#: Edge rows written after the real ones: ages off the 5-year grid, a blank age, a blank localization.
EDGE_ROWS = [
    {"lesion_id": "HAM_9000001", "image_id": "ISIC_9000001", "dx": "MEL", "dx_type": "histo", "age": "37",
     "sex": "female", "localization": ""},
    {"lesion_id": "HAM_9000002", "image_id": "ISIC_9000002", "dx": "nv", "dx_type": "histo", "age": "39.9",
     "sex": "male", "localization": "Back"},
    {"lesion_id": "HAM_9000003", "image_id": "ISIC_9000003", "dx": "df", "dx_type": "histo", "age": "4",
     "sex": "", "localization": "unknown"},
    {"lesion_id": "HAM_9000004", "image_id": "ISIC_9000004", "dx": "vasc", "dx_type": "histo", "age": "",
     "sex": "male", "localization": ""},
]  # fmt: skip


def real_rows() -> list[dict[str, str]]:
    with (require(HAM10000) / "HAM10000_metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def parsed(spark, rows: list[dict[str, str]], folder: Path):
    """`rows` written as a metadata CSV and read back the way clean reads a batch's CSV."""
    path = folder / "metadata.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return parse_metadata(read_metadata_csv(spark, str(path)), str(path))


def expected_profile(rows: list[dict[str, str]]) -> eda.Profile:
    """What eda should count, from the CSV text: lower-cased values, a blank sex or localization is
    'unknown', a blank age is left out of the histogram, ages fall in 5-year bins."""
    ages = Counter(
        float(math.floor(float(r["age"]) / eda.AGE_BIN_YEARS) * eda.AGE_BIN_YEARS) for r in rows if r["age"]
    )
    return eda.Profile(
        dx=dict(Counter(r["dx"].lower() for r in rows)),
        age=dict(sorted(ages.items())),
        sex=dict(Counter(r["sex"].lower() or UNKNOWN_VALUE for r in rows)),
        localization=dict(Counter(r["localization"].lower() or UNKNOWN_VALUE for r in rows)),
    )


@pytest.fixture(scope="module")
def sample_rows() -> list[dict[str, str]]:
    """Every 50th real row (200 rows, all 7 classes) and the edge rows."""
    rows = real_rows()[::50] + EDGE_ROWS
    assert {r["dx"].lower() for r in rows} == set(CLASSES)
    return rows


@pytest.fixture(scope="module")
def sample(spark, sample_rows, tmp_path_factory):
    return parsed(spark, sample_rows, tmp_path_factory.mktemp("eda")).cache()


@pytest.fixture(scope="module")
def sample_profile(sample) -> eda.Profile:
    return eda.profile(sample)


def bars(png: bytes) -> list[tuple[str, int]]:
    """(colour, height in pixels) of each red or blue bar of a chart, left to right."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    masks = {}
    for name, colour in COLOURS.items():
        rgb = np.array([round(255 * c) for c in to_rgba(colour)[:3]])
        masks[name] = np.abs(pixels - rgb).sum(axis=2) <= 6
    found: list[tuple[str, int]] = []
    previous = None
    for x in range(pixels.shape[1]):
        here = [name for name, mask in masks.items() if mask[:, x].any()]
        assert len(here) <= 1, f"column {x} has bars of both colours"
        column = (here[0], int(masks[here[0]][:, x].sum())) if here else None
        if column and previous and column[0] == previous[0]:
            found[-1] = (column[0], max(found[-1][1], column[1]))
        elif column:
            found.append(column)
        previous = column
    return found


# ---------------------------------------------------------------------------------------------- counts


def test_profile_counts_the_small_frame_as_the_csv_says(sample_profile, sample_rows):
    assert sample_profile == expected_profile(sample_rows)


def test_unknowns_and_age_bins(sample_profile, sample_rows):
    prof = sample_profile
    real = sample_rows[: -len(EDGE_ROWS)]
    literal_unknown = sum(r["localization"] == "unknown" for r in real)
    # The CSV's literal 'unknown' (2 rows here: one real, one edge) and the blank ones are one category.
    assert prof.localization[UNKNOWN_VALUE] == literal_unknown + 3
    assert prof.sex[UNKNOWN_VALUE] == sum(r["sex"] == "unknown" for r in real) + 1
    assert None not in prof.localization and None not in prof.sex
    # 37 and 39.9 fall in the 35 bin, 4 in the 0 bin; the blank age is in no bin.
    real_ages = Counter(float(r["age"]) for r in real if r["age"])
    assert prof.age[35.0] == real_ages[35.0] + 2
    assert prof.age[0.0] == real_ages[0.0] + 1
    assert sum(prof.age.values()) == len(sample_rows) - sum(not r["age"] for r in sample_rows)
    assert list(prof.age) == sorted(prof.age)
    # Upper-case dx is counted with its class.
    assert prof.dx["mel"] == sum(r["dx"].lower() == "mel" for r in sample_rows)


def test_profile_of_the_whole_real_metadata(real_metadata):
    rows = real_rows()
    prof = eda.profile(real_metadata)
    assert prof == expected_profile(rows)
    assert sum(prof.dx.values()) == len(rows) == 10_015
    assert sum(prof.age.values()) == len(rows) - sum(not r["age"] for r in rows)


def test_counts_of_any_column(sample, sample_rows):
    assert eda.counts(sample, "dx_type") == dict(Counter(r["dx_type"] for r in sample_rows))


# ---------------------------------------------------------------------------------------------- figures


def test_class_distribution_bars_are_the_class_counts_with_malignant_in_red(real_metadata):
    prof = eda.profile(real_metadata)
    pngs = eda.figure_pngs(prof, "batch")
    found = bars(pngs["batch_class_distribution.png"])
    assert [colour for colour, _ in found] == ["red" if dx in MALIGNANT else "blue" for dx in CLASSES]
    heights = [height for _, height in found]
    tallest = max(heights)
    for dx, height in zip(CLASSES, heights, strict=True):
        assert height == pytest.approx(tallest * prof.dx[dx] / max(prof.dx.values()), abs=2), dx
    # The red share of the bars is the malignant share of the images (about a fifth in HAM10000).
    malignant_share = sum(prof.dx[dx] for dx in MALIGNANT) / sum(prof.dx.values())
    red_share = sum(h for c, h in found if c == "red") / sum(heights)
    assert red_share == pytest.approx(malignant_share, abs=0.01)


def test_one_figure_per_view_each_a_png_of_the_chart_size(sample_profile):
    pngs = eda.figure_pngs(sample_profile, "cumulative")
    assert set(pngs) == {
        "cumulative_class_distribution.png",
        "cumulative_age.png",
        "cumulative_sex.png",
        "cumulative_localization.png",
    }
    for png in pngs.values():
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (800, 450)


def test_localization_bars_are_sorted_by_count_and_sex_bars_by_name(sample_profile):
    prof = sample_profile
    pngs = eda.figure_pngs(prof, "batch")
    localization = [height for _, height in bars(pngs["batch_localization.png"])]
    assert len(localization) == len(prof.localization)
    assert localization == sorted(localization, reverse=True)
    sex = [height for _, height in bars(pngs["batch_sex.png"])]
    by_name = [prof.sex[name] for name in sorted(prof.sex)]  # female, male, unknown
    assert [h / max(sex) for h in sex] == pytest.approx([n / max(by_name) for n in by_name], abs=0.01)


def test_a_class_without_images_has_no_bar_and_no_age_draws_an_empty_chart():
    prof = eda.Profile(dx={"nv": 10, "mel": 5}, age={}, sex={"male": 15}, localization={"back": 15})
    pngs = eda.figure_pngs(prof, "batch")
    (nv_colour, nv_height), (mel_colour, mel_height) = bars(pngs["batch_class_distribution.png"])
    assert (nv_colour, mel_colour) == ("blue", "red")
    assert mel_height == pytest.approx(nv_height / 2, abs=2)
    assert bars(pngs["batch_age.png"]) == []
    assert Image.open(io.BytesIO(pngs["batch_age.png"])).size == (800, 450)


VIEWS = ("class_distribution", "age", "sex", "localization")


def test_write_figures_writes_the_batch_and_the_cumulative_views(
    spark, sample, sample_profile, real_metadata, tmp_path
):
    only_batch = eda.write_figures(spark, sample, None, str(tmp_path / "one"))
    assert sorted(Path(uri).name for uri in only_batch) == sorted(f"batch_{view}.png" for view in VIEWS)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(
        Path(uri).name for uri in only_batch
    )
    both = eda.write_figures(spark, sample, real_metadata, str(tmp_path / "two"))
    names = sorted(f"{scope}_{view}.png" for scope in ("batch", "cumulative") for view in VIEWS)
    assert sorted(Path(uri).name for uri in both) == names
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    # The batch views are the batch's (the figures of its profile); the cumulative ones another frame's.
    batch_pngs = eda.figure_pngs(sample_profile, "batch")
    for view in VIEWS:
        written = (tmp_path / "two" / f"batch_{view}.png").read_bytes()
        assert written == batch_pngs[f"batch_{view}.png"], view
    cumulative = (tmp_path / "two" / "cumulative_class_distribution.png").read_bytes()
    assert Image.open(io.BytesIO(cumulative)).format == "PNG"
    assert bars(cumulative) != bars(batch_pngs["batch_class_distribution.png"])
