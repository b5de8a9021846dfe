"""Weights identity ↔ weights source: which `--weights` rebuilds the backbone some features were made with.

Every feature row and model records a `weights_id` (`imagenet`, `random-seed<N>` or `sha256:<16 hex>` of a
weights file, see `molescope.features.backbones`). The first two name their source; a file's hash does not, so
its path or s3a:// URI must be given again, and it is hashed to check that it is the same file.
"""

from __future__ import annotations

from molescope.core.registry import (
    RANDOM_WEIGHTS_PREFIX,
    SHA256_WEIGHTS_PREFIX,
    WEIGHTS_AUTO,
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
)
from molescope.features.backbones import BackboneSpec, resolve_backbone
from molescope.features.spec import FeatureSpec, FeatureSpecMismatch


def random_weights_id(seed: int) -> str:
    return f"{RANDOM_WEIGHTS_PREFIX}{seed}"


def random_seed_of(weights_id: str) -> int | None:
    """N of `random-seed<N>`, else None."""
    suffix = weights_id.removeprefix(RANDOM_WEIGHTS_PREFIX)
    return int(suffix) if suffix != weights_id and suffix.isdigit() else None


def weights_source(weights_id: str, weights: str | None) -> tuple[str, int]:
    """(weights source, seed) that rebuild `weights_id`; `weights` None or `auto`: derived from the id.

    Random weights are rebuilt with their own seed (also when `random` is given explicitly). ValueError when
    the id names no source (a weights file) and none is given.
    """
    seed = random_seed_of(weights_id)
    if weights not in (None, WEIGHTS_AUTO):
        return weights, seed or 0
    if seed is not None:
        return WEIGHTS_RANDOM, seed
    if weights_id == WEIGHTS_IMAGENET:
        return WEIGHTS_IMAGENET, 0
    if weights_id.startswith(SHA256_WEIGHTS_PREFIX):
        raise ValueError(
            f"the features were made with a weights file ({weights_id}): pass --weights with the path or "
            "s3a:// URI of that file"
        )
    raise ValueError(f"cannot derive a weights source from weights_id {weights_id!r}; pass --weights")


def matching_backbone(
    expected: FeatureSpec, weights: str | None, action: str, *, compare_dim: bool = True
) -> BackboneSpec:
    """The backbone that rebuilds `expected`'s features from `weights` (None/auto: derived from its id).

    A weights file is hashed here (s3a:// URIs are fetched first), so a wrong file is refused on the driver,
    before any image is read: FeatureSpecMismatch("refusing to <action>: ...") names both feature specs.
    `compare_dim=False`: the same backbone and weights are enough (fine-tuning trains on the images).
    """
    source, seed = weights_source(expected.weights_id, weights)
    backbone = resolve_backbone(expected.backbone, source, seed=seed)
    wanted = (expected.backbone, expected.weights_id, expected.feature_dim)
    found = (backbone.name, backbone.weights_id, backbone.feature_dim)
    if not compare_dim:
        wanted, found = wanted[:2], found[:2]
    if wanted != found:
        raise FeatureSpecMismatch(
            f"refusing to {action}: the features were made with (backbone, weights_id, feature_dim) = "
            f"{wanted}, but weights {backbone.weights!r} give {found}"
        )
    return backbone
