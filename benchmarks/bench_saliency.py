"""What the case review's Grad-CAM maps cost per card, next to what scoring costs per image.

For each backbone: --images real HAM10000 images (200x150) decoded and resized to the backbone's input,
then, on the driver as the score stage does it,
- `features`: the pooled backbone forward pass (what featurize runs per scored image, keras engine);
- `saliency`: `SaliencyModel.class_maps` (the convolutional part's forward pass and the class maps) plus
  `imaging.overlay` per card (the JPEG the page embeds);
milliseconds per image, best of --rounds after one untimed pass. A batch of n images with k cards then adds
about k × saliency over n × features (plus the stage's fixed costs, which the ratio leaves out). The lr head
is a random 7-class weight matrix: the maps' cost does not depend on its values.

Backbones: MobileNet-0.25 with the ImageNet weights of ../shared, and ResNet50 with random weights (its cost
is the same with any weights; ImageNet ones cannot be downloaded here).

    python benchmarks/bench_saliency.py [--images 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from molescope.core.constants import CLASSES
from molescope.features.backbones import build_model, preprocess_function, resolve_backbone
from molescope.io.imaging import decode_resized, overlay
from molescope.models.saliency import SaliencyModel, convolutional_part

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import HAM10000, MOBILENET_025_WEIGHTS, require  # noqa: E402

CARD_PX = 160


def best_ms(action, count: int, rounds: int) -> float:
    action()
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return 1000 * min(timings) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import tensorflow as tf

    paths = sorted(require(HAM10000 / "images").glob("*.jpg"))[: args.images]
    jpegs = [path.read_bytes() for path in paths]
    specs = {
        "mobilenet-0.25": resolve_backbone("mobilenet", str(require(MOBILENET_025_WEIGHTS)), alpha=0.25),
        "resnet50 (random)": resolve_backbone("resnet50", "random"),
    }
    rng = np.random.default_rng(0)
    print(f"{'backbone':<20} {'features ms/img':>16} {'saliency ms/card':>17} {'ratio':>6}")
    for name, spec in specs.items():
        pooled = build_model(spec)
        pixels = np.stack([decode_resized(data, spec.input_size) for data in jpegs])
        preprocess = preprocess_function(spec)

        def features(pooled=pooled, pixels=pixels, preprocess=preprocess) -> None:
            for start in range(0, len(pixels), 32):
                pooled(preprocess(tf.cast(pixels[start : start + 32], tf.float32)), training=False)

        model = SaliencyModel(
            convolutional_part(pooled), spec, rng.normal(size=(spec.feature_dim, len(CLASSES)))
        )
        classes = rng.integers(0, len(CLASSES), size=len(pixels))

        def maps(model=model, pixels=pixels, classes=classes) -> None:
            for data, heat in zip(jpegs, model.class_maps(pixels, classes), strict=True):
                overlay(data, heat, CARD_PX)

        per_image = best_ms(features, len(pixels), args.rounds)
        per_card = best_ms(maps, len(pixels), args.rounds)
        print(f"{name:<20} {per_image:>16.1f} {per_card:>17.1f} {per_card / per_image:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
