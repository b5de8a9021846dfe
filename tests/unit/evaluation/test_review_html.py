"""molescope.evaluation.review_html: the case-review page's structure, escaping and the pages for batches
with nothing to flag, no rule, or no similar cases."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from molescope.core.constants import CLASSES
from molescope.evaluation import drift
from molescope.evaluation.review_html import Card, Neighbour, ReviewContent, jpeg_uri, render
from molescope.io.imaging import thumbnail
from tests.conftest import HAM10000, require

JPEG_PREFIX = "data:image/jpeg;base64,"


class Page(HTMLParser):
    """Ids, cards (their data attributes) and image sources of a page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.cards: list[dict[str, str]] = []
        self.images: list[dict[str, str]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "div" and "card" in attributes.get("class", "").split():
            self.cards.append(attributes)
        if tag == "img":
            self.images.append(attributes)


def lesion_jpeg() -> bytes:
    images = require(HAM10000 / "images")
    return next(iter(sorted(images.glob("*.jpg")))).read_bytes()


def card(rank: int, mel: float, **extra) -> Card:
    probabilities = dict.fromkeys(CLASSES, (1 - mel) / (len(CLASSES) - 1)) | {"mel": mel}
    defaults = {
        "image_id": f"ISIC_{rank:07d}",
        "thumbnail": None,
        "decided": "mel" if mel >= 0.5 else "nv",
        "flagged": mel >= 0.5,
    }
    return Card(rank=rank, probabilities=probabilities, **(defaults | extra))


def content(cards: list[Card], **extra) -> ReviewContent:
    values = {
        "batch_id": "b-1",
        "model": "lr",
        "model_uri": "s3a://bucket/runs/r1/models/lr",
        "generated_at": "2026-12-07T00:00:00+00:00",
        "rule": "predict mel when q(mel) >= 0.5",
        "temperature": 1.3,
        "cards": cards,
        "scored": len(cards),
        "flagged": sum(bool(c.flagged) for c in cards),
        "class_mix": [(dx, 0, 0.0, 1 / len(CLASSES)) for dx in CLASSES],
        "quarantined_by_reason": {"image_corrupt": 2},
    }
    return ReviewContent(**(values | extra))


def test_cards_in_worklist_order_with_thumbnails_and_similar_cases():
    jpeg = thumbnail(lesion_jpeg(), 160)
    with Image.open(io.BytesIO(jpeg)) as image:
        assert max(image.size) == 160 and image.format == "JPEG"
    neighbour = Neighbour("ISIC_0024306", "mel", "histo", 0.93, jpeg_uri(thumbnail(lesion_jpeg(), 64)))
    cards = [card(1, 0.9, thumbnail=jpeg_uri(jpeg), neighbours=[neighbour]), card(2, 0.4), card(3, 0.1)]
    html = render(content(cards))
    page = Page(html)
    assert [c["data-rank"] for c in page.cards] == ["1", "2", "3"]
    assert [float(c["data-mel"]) for c in page.cards] == [0.9, 0.4, 0.1]
    assert "flagged" in page.cards[0]["class"].split() and "flagged" not in page.cards[1]["class"].split()
    sources = [image["src"] for image in page.images]
    assert len(sources) == 2 and all(src.startswith(JPEG_PREFIX) for src in sources)
    assert base64.b64decode(sources[0].removeprefix(JPEG_PREFIX)) == jpeg
    assert "histo" in html and "0.930" in html
    assert {"summary", "worklist", "class-mix", "quarantine", "filter"} <= page.ids
    assert "none-flagged" not in page.ids and "no-rule" not in page.ids


def test_values_from_files_are_escaped():
    html = render(content([card(1, 0.9, image_id="<script>alert(1)</script>")], batch_id="<b>x</b>"))
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "<b>x</b>" not in html


def test_a_batch_with_nothing_flagged_says_so():
    page = Page(render(content([card(1, 0.2), card(2, 0.1)])))
    assert "none-flagged" in page.ids and len(page.cards) == 2


def test_a_model_without_rule_or_similar_cases_says_why():
    note = "not shown for an image model"
    page = Page(render(content([card(1, 0.7, flagged=None)], rule=None, neighbours_note=note, flagged=0)))
    assert {"no-rule", "neighbours-note"} <= page.ids
    assert "none-flagged" not in page.ids  # without a rule nothing could be flagged: the warning says why


def test_an_empty_worklist_is_a_sentence_not_an_empty_grid():
    page = Page(render(content([], scored=0)))
    assert "no-cards" in page.ids and not page.cards


def test_the_drift_section_shows_each_test_its_level_and_the_verdict():
    ham_mix = dict(zip(CLASSES, (0.67, 0.11, 0.11, 0.05, 0.03, 0.015, 0.015), strict=True))
    only_nv = {dx: float(dx == "nv") for dx in CLASSES}
    reference = drift.reference(np.linspace(0, 1, 400).repeat(len(drift.SUMMARIES)).reshape(400, -1))
    n = drift.MIN_IMAGES
    darker = np.linspace(0, 0.5, n).repeat(len(drift.SUMMARIES)).reshape(n, -1)
    report = drift.compare(n, reference, darker, ham_mix, only_nv)
    html = render(content([card(1, 0.2)], drift=report))
    page = Page(html)
    assert {"drift", "drift-verdict", "drift-tests"} <= page.ids
    assert 'id="drift-verdict">shift<' in html
    rows = re.findall(r'<tr class="(\w+)"><td class="key">([\w ]+)</td><td>([0-9.]+)</td>', html)
    assert [(level, name) for level, name, _ in rows] == [(t["level"], t["test"]) for t in report["tests"]]
    assert [float(value) for *_, value in rows] == [
        pytest.approx(t["psi"], abs=1e-3) for t in report["tests"]
    ]
    assert "nv 0.670 / 1.000" in html  # the class mix: validation's decided share / the batch's
    # Without references the section says what could not be tested, instead of an empty table.
    bare = render(content([card(1, 0.2)], drift=drift.compare(3, None, None, None, None)))
    assert 'id="drift-verdict">not tested<' in bare and "drift-tests" not in Page(bare).ids
    assert bare.count("not tested:") == 2 and f"fewer than the {drift.MIN_IMAGES}" in bare


def test_a_card_shows_its_overlay_or_the_page_says_why_there_is_none():
    overlay = jpeg_uri(thumbnail(lesion_jpeg(), 160))
    page = Page(render(content([card(1, 0.9, overlay=overlay, explained="mel"), card(2, 0.1)])))
    saliency = [image for image in page.images if image.get("class") == "saliency"]
    assert [image["src"] for image in saliency] == [overlay] and "for mel" in saliency[0]["alt"]
    assert "saliency-how" in page.ids and "saliency-note" not in page.ids
    why = "no saliency maps for rf: its class scores are not linear"
    without = Page(render(content([card(1, 0.9)], saliency_note=why)))
    assert "saliency-note" in without.ids and not [i for i in without.images if i.get("class") == "saliency"]
