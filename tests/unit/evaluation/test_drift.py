"""molescope.evaluation.drift: the image summaries on hand-computed pixels, PSI by hand, and the whole check
on real HAM10000 images (decoded at SUMMARY_PX as the product does): held-out images of the same data are
stable, the same images through another "dermatoscope" (a colour cast and exposure change) are a shift.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from molescope.core.constants import CLASS_INDEX, CLASSES
from molescope.evaluation import drift
from molescope.io.imaging import decode_resized
from tests.conftest import HAM10000, require

#: Reference and batch sizes of the real-data checks (disjoint images, sorted by id).
REFERENCE, BATCH = 600, 300


def ham_images(count: int) -> list[np.ndarray]:
    paths = sorted(require(HAM10000 / "images").glob("*.jpg"))[:count]
    assert len(paths) == count
    return [decode_resized(path.read_bytes(), drift.SUMMARY_PX) for path in paths]


@pytest.fixture(scope="module")
def real_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = ham_images(REFERENCE + BATCH)
    # Every other image to the reference: both halves come from the same stretch of ids.
    return images[: 2 * BATCH : 2] + images[2 * BATCH :], images[1 : 2 * BATCH : 2]


def summaries(images: list[np.ndarray]) -> np.ndarray:
    return np.array([drift.image_summaries(image) for image in images])


def another_dermatoscope(image: np.ndarray) -> np.ndarray:
    """A cooler white balance and 15 % less exposure: what a different device's export looks like."""
    cast = image.astype(np.float32) * np.array([0.85, 0.95, 1.1]) * 0.85
    return cast.clip(0, 255).astype(np.uint8)


def test_image_summaries_by_hand():
    black = np.zeros((4, 6, 3), dtype=np.uint8)
    assert drift.image_summaries(black) == (0.0, 0.0, 0.0, pytest.approx(1 / 3))
    red = np.zeros((4, 6, 3), dtype=np.uint8)
    red[..., 0] = 255
    assert drift.image_summaries(red) == pytest.approx((0.299, 0.0, 1.0, 1.0), abs=1e-6)
    half = np.full((2, 2, 3), 255, dtype=np.uint8)
    half[0] = 0  # one row black, one white: luma mean 0.5, std 0.5; grey has no saturation
    assert drift.image_summaries(half) == pytest.approx((0.5, 0.5, 0.0, 1 / 3), abs=1e-6)


def test_psi_by_hand():
    assert drift.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5))
    # An empty bin is floored, not infinite.
    assert math.isfinite(drift.psi([0.5, 0.5], [1.0, 0.0]))
    assert [drift.level(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, 3.0)] == [
        "stable", "stable", "moderate", "moderate", "shift", "shift"
    ]  # fmt: skip


def test_reference_holds_deciles_and_shares():
    rng = np.random.default_rng(0)
    values = rng.uniform(size=(1000, len(drift.SUMMARIES)))
    ref = drift.reference(values)
    assert ref["n"] == 1000 and set(ref["summaries"]) == set(drift.SUMMARIES)
    stored = ref["summaries"]["contrast"]
    assert len(stored["edges"]) == drift.BINS - 1 and stored["edges"] == sorted(stored["edges"])
    assert stored["shares"] == pytest.approx([0.1] * drift.BINS, abs=0.002)
    assert stored["median"] == pytest.approx(np.median(values[:, 1]), abs=1e-6)
    # The reference's own values are stable against it, by construction.
    assert all(t["psi"] < 1e-3 for t in drift.image_tests(ref, values))


def test_decided_mix_counts_undecided_in_no_class():
    mix = drift.decided_mix([CLASS_INDEX["nv"], CLASS_INDEX["nv"], CLASS_INDEX["mel"], -1])
    assert mix["nv"] == 0.5 and mix["mel"] == 0.25 and sum(mix.values()) == 0.75
    assert list(mix) == list(CLASSES)


def test_real_images_same_source_stable_other_device_shift(real_images):
    reference_images, batch_images = real_images
    ref = drift.reference(summaries(reference_images))
    same = drift.compare(BATCH, ref, summaries(batch_images), None, None)
    assert same["verdict"] == "stable", same["tests"]
    other_device = summaries([another_dermatoscope(image) for image in batch_images])
    shifted = drift.compare(BATCH, ref, other_device, None, None)
    assert shifted["verdict"] == "shift", shifted["tests"]
    by_test = {t["test"]: t for t in shifted["tests"]}
    assert by_test["brightness"]["level"] == "shift"
    assert by_test["brightness"]["batch"] < by_test["brightness"]["reference"]
    assert by_test["redness"]["batch"] < by_test["redness"]["reference"]
    assert "class mix not tested" in " ".join(shifted["notes"])


def test_class_mix_shift_and_small_batches_get_no_verdict():
    ham_mix = dict(zip(CLASSES, (0.67, 0.11, 0.11, 0.05, 0.03, 0.015, 0.015), strict=True))
    only_nv = {dx: float(dx == "nv") for dx in CLASSES}
    report = drift.compare(500, None, None, ham_mix, only_nv)
    assert report["verdict"] == "shift" and report["tests"][0]["test"] == "decided class mix"
    assert "image statistics not tested" in report["notes"][0]
    assert drift.compare(500, None, None, ham_mix, ham_mix)["verdict"] == "stable"
    small = drift.compare(drift.MIN_IMAGES - 1, None, None, ham_mix, only_nv)
    assert small["verdict"] == drift.NOT_TESTED and small["tests"][0]["level"] == "shift"
    assert f"fewer than the {drift.MIN_IMAGES}" in small["notes"][-1]
    assert drift.compare(500, None, None, None, None)["verdict"] == drift.NOT_TESTED
