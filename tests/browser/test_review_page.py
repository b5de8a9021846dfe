"""The case-review page in a real browser: it loads from a file (self-contained), the worklist is sorted by
calibrated melanoma probability, a card's lesion image, its saliency overlay and its similar cases' images
decode, and the class filter hides the other cards.

The page is built by the score stage's own code (`worklist.rank`, `review.cards`, `review_html.render`) on
real HAM10000 images, with a calibrated decision rule; no Spark is needed for what is tested here.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from molescope.core.constants import CLASSES
from molescope.evaluation.review_html import Neighbour, ReviewContent, jpeg_uri, render
from molescope.evaluation.rules import DecisionRule
from molescope.io.imaging import overlay, thumbnail
from molescope.scoring import review, worklist
from tests.conftest import HAM10000, require

pytestmark = pytest.mark.browser

IMAGES = 12
RULE = DecisionRule((1 / len(CLASSES),) * len(CLASSES), 0.0, 0.3, 0.8, n=100, temperature=1.4)


def real_images() -> dict[str, bytes]:
    with require(HAM10000 / "HAM10000_metadata.csv").open() as handle:
        ids = [row["image_id"] for row, _ in zip(csv.DictReader(handle), range(IMAGES), strict=False)]
    return {image_id: (HAM10000 / "images" / f"{image_id}.jpg").read_bytes() for image_id in ids}


def centre_heat(size: int = 7) -> np.ndarray:
    """A map peaking in the middle of the image, as Grad-CAM's does on a centred lesion."""
    grid = np.linspace(-1, 1, size)
    return np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) * 2)


@pytest.fixture(scope="module")
def review_page(tmp_path_factory):
    images = real_images()
    rng = np.random.default_rng(3)
    predictions = pd.DataFrame(
        {
            "image_id": list(images),
            "dx": [None] * len(images),
            "probability": [rng.dirichlet(np.ones(len(CLASSES))).tolist() for _ in images],
        }
    )
    frame = worklist.rank(predictions, RULE, top=8)
    shown = frame[frame["shown"]]
    first = shown["image_id"].iloc[0]
    similar = {
        first: [
            Neighbour(i, "mel", "histo", 0.9 - k / 10, jpeg_uri(thumbnail(images[i], 64)))
            for k, i in enumerate(list(images)[:3])
        ]
    }
    content = ReviewContent(
        batch_id="browser-batch",
        model="lr",
        model_uri="s3a://molescope/runs/r/models/lr",
        generated_at="2026-12-07T00:00:00+00:00",
        rule=RULE.text(),
        temperature=RULE.temperature,
        cards=review.cards(shown, images, similar, {first: overlay(images[first], centre_heat(), 160)}),
        scored=len(frame),
        flagged=int(frame["flagged"].eq(True).sum()),
        class_mix=worklist.class_mix(frame, RULE),
        quarantined_by_reason={},
    )
    path = tmp_path_factory.mktemp("review") / "review.html"
    path.write_text(render(content))
    return path, shown


def test_review_page_loads_sorted_with_images_and_filters(browser, review_page):
    path, shown = review_page
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(path.as_uri())
    assert page.title() == "molescope case review browser-batch"
    cards = page.locator(".card")
    assert cards.count() == len(shown)
    mel = [float(v) for v in cards.evaluate_all("cards => cards.map(c => c.dataset.mel)")]
    assert mel == sorted(mel, reverse=True) and mel == pytest.approx(
        shown["mel_probability"].tolist(), abs=1e-6
    )
    decoded = (
        page.locator(".card")
        .first.locator("img")
        .evaluate_all("images => images.map(i => i.complete && i.naturalWidth > 0)")
    )
    assert decoded == [True] * 5  # the lesion, its saliency overlay and its 3 similar cases
    overlay_width = page.locator(".card").first.locator("img.saliency").evaluate("i => i.naturalWidth")
    assert overlay_width == 160 and page.locator("img.saliency").count() == 1
    assert page.locator(".card").first.locator(".neighbour").count() == 3
    decided = cards.evaluate_all("cards => cards.map(c => c.dataset.decided)")
    target = decided[-1]
    page.select_option("#filter", target)
    visible = cards.evaluate_all("cards => cards.filter(c => c.style.display !== 'none').length")
    assert visible == decided.count(target) < len(decided) or set(decided) == {target}
    page.close()
