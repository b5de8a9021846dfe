"""What a feature model expects as input: which backbone's features (backbone, weights id, width) and how they
are reduced (standardization, PCA). Featurize writes the first three, train fixes the rest, score checks
them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from molescope.core.errors import InputError


class FeatureSpecMismatch(InputError):
    """Features handed to a model differ from the ones it was trained on."""


@dataclass(frozen=True)
class FeatureSpec:
    """What a model expects as input: which backbone features, and how they are reduced."""

    backbone: str
    weights_id: str
    feature_dim: int
    pca_k: int | None
    standardize: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> FeatureSpec:
        return cls(**{key: payload[key] for key in cls.__dataclass_fields__})
