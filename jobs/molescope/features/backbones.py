"""CNN backbones for feature extraction: building them, weights sources and the weights identity.

The families and their widths are registered in `molescope.core.registry.ARCHITECTURES`. A backbone is a
`keras.applications` constructor built with `include_top=False, pooling="avg"`, so its output is one feature
vector per image. Each has its own input size and `preprocess_input`. Weights come from one of:

- `imagenet`: the normal Keras download into `~/.keras/models` (users' machines);
- a local file path (`.h5`, `.weights.h5` or `.keras`);
- an `s3a://` or `s3://` URI, fetched with boto3 once per process into a local cache (air-gapped clusters);
- `random`: seeded initialisation, for tests and speed benchmarks only.

`resolve_backbone` runs on the driver and returns a `BackboneSpec` whose `weights_id` (`imagenet`,
`random-seed<N>` or `sha256:<16 hex>` of the file content) is written into every feature row and into the
output path, so features of different backbones or weights never mix. `load_model` runs on the workers.
A source that cannot be loaded raises `BackboneError` naming the backbone and the source; there is no
fallback to other weights.

TensorFlow is imported only inside the functions that need it: the CLI imports the stage modules to build its
parser and must stay fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from molescope.core.errors import InputError
from molescope.core.registry import (
    ARCHITECTURES,
    DEFAULT_ALPHA,
    DEFAULT_BACKBONE,
    RANDOM_WEIGHTS_PREFIX,
    SHA256_WEIGHTS_PREFIX,
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
    Architecture,
)
from molescope.io import s3

log = logging.getLogger(__name__)

#: Hex digits of the content hash kept in `weights_id` (64 bits: collisions are not a practical concern).
HASH_PREFIX_LEN = 16
HASH_CHUNK_BYTES = 1 << 20
#: Where fetched s3 weights are cached on each machine; defaults to a folder under the system temp dir.
ENV_WEIGHTS_CACHE = "MOLESCOPE_WEIGHTS_CACHE"


class BackboneError(InputError):
    """A backbone or weights source that cannot be used; the message names both."""


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone + weights: everything a worker needs to rebuild the exact same model.

    `name` is the canonical backbone name written to the feature table (`mobilenet_0.25` for MobileNet
    alpha 0.25); `weights` is the source as given; `weights_id` the identity recorded next to the features.
    """

    name: str
    family: str
    alpha: float | None
    weights: str
    weights_id: str
    input_size: int
    feature_dim: int
    seed: int = 0

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.family]

    @property
    def weights_dir(self) -> str:
        """`weights_id` as a path segment (Hadoop paths cannot hold `:`)."""
        return self.weights_id.replace(":", "-")


def parse_backbone_name(name: str, alpha: float | None = None) -> tuple[str, float | None]:
    """`mobilenet_0.25` or (`mobilenet`, 0.25) → (`mobilenet`, 0.25); alpha only for width-scalable ones."""
    family, _, suffix = name.strip().lower().partition("_")
    if family not in ARCHITECTURES:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    if suffix:
        try:
            suffix_alpha = float(suffix)
        except ValueError:
            raise BackboneError(
                f"unknown backbone {name!r}: width suffix {suffix!r} is not a number"
            ) from None
        if alpha is not None and alpha != suffix_alpha:
            raise BackboneError(f"backbone {name!r} contradicts alpha {alpha}")
        alpha = suffix_alpha
    arch = ARCHITECTURES[family]
    if not arch.alphas:
        if alpha is not None:
            raise BackboneError(f"backbone {family!r} has no width multiplier (alpha {alpha} given)")
        return family, None
    alpha = DEFAULT_ALPHA if alpha is None else alpha
    if alpha not in arch.alphas:
        raise BackboneError(f"backbone {family!r}: alpha {alpha} not in {arch.alphas}")
    return family, alpha


def canonical_name(family: str, alpha: float | None) -> str:
    return family if alpha is None else f"{family}_{alpha:g}"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_weights_id(path: str | Path) -> str:
    return f"{SHA256_WEIGHTS_PREFIX}{file_sha256(path)[:HASH_PREFIX_LEN]}"


def resolve_backbone(
    name: str = DEFAULT_BACKBONE, weights: str = WEIGHTS_IMAGENET, alpha: float | None = None, seed: int = 0
) -> BackboneSpec:
    """Validate a backbone + weights source and compute its weights identity (driver side, no TensorFlow).

    A local or s3 weights file is read here (and fetched, for s3) to hash its content, so a missing file is
    reported before any Spark job starts.
    """
    family, alpha = parse_backbone_name(name, alpha)
    backbone = canonical_name(family, alpha)
    source = weights.strip()
    if source == WEIGHTS_IMAGENET:
        weights_id = WEIGHTS_IMAGENET
    elif source == WEIGHTS_RANDOM:
        weights_id = f"{RANDOM_WEIGHTS_PREFIX}{seed}"
    else:
        local = local_weights_file(backbone, source)
        weights_id = content_weights_id(local)
        # Workers may run in another directory: give them an absolute path (s3 URIs stay as given).
        source = source if s3.is_s3_uri(source) else str(local.resolve())
    arch = ARCHITECTURES[family]
    return BackboneSpec(
        name=backbone,
        family=family,
        alpha=alpha,
        weights=source,
        weights_id=weights_id,
        input_size=arch.input_size,
        feature_dim=arch.feature_dim(alpha),
        seed=seed,
    )


def local_weights_file(backbone: str, source: str) -> Path:
    """A local path to the weights file of `source` (fetching s3 URIs into the cache); error if unreadable."""
    if s3.is_s3_uri(source):
        return fetch_s3_weights(backbone, source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise BackboneError(f"backbone {backbone}: weights file {source!r} does not exist")
    return path


_fetch_lock = threading.Lock()
_fetched: dict[str, Path] = {}


def weights_cache_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "molescope-weights"
    return Path(os.environ.get(ENV_WEIGHTS_CACHE) or default)


def fetch_s3_weights(backbone: str, uri: str) -> Path:
    """Download `uri` once per process (and once per machine, via the cache dir); return the local file.

    The cache file keeps the object's base name because Keras picks the loader from the suffix. The download
    goes to a temporary name and is renamed, so concurrent workers on one machine never read a partial file.
    """
    with _fetch_lock:
        if uri in _fetched and _fetched[uri].is_file():
            return _fetched[uri]
        bucket, key = s3.split_uri(uri)
        if not bucket or not key:
            raise BackboneError(f"backbone {backbone}: weights URI {uri!r} has no bucket or key")
        target = weights_cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(key).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            try:
                s3.client().download_file(bucket, key, str(partial))
            except Exception as exc:
                partial.unlink(missing_ok=True)
                raise BackboneError(f"backbone {backbone}: cannot fetch weights {uri!r}: {exc}") from exc
            os.replace(partial, target)
            log.info("fetched weights %s to %s", uri, target)
        _fetched[uri] = target
        return target


def preprocess_function(spec: BackboneSpec):
    """The family's own `keras.applications.<module>.preprocess_input` (float32 RGB 0..255 in)."""
    import keras

    return getattr(keras.applications, spec.architecture.preprocess_module).preprocess_input


def build_model(spec: BackboneSpec) -> Any:
    """Build the Keras model of `spec` with its weights, or raise BackboneError naming backbone and source."""
    import keras

    arch = spec.architecture
    constructor = getattr(keras.applications, arch.constructor)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "pooling": "avg",
        "input_shape": (spec.input_size, spec.input_size, 3),
    }
    if spec.alpha is not None:
        kwargs["alpha"] = spec.alpha
    if spec.weights == WEIGHTS_RANDOM:
        # Keras draws initial values from its global seed: seeding it makes random features reproducible
        # across runs and processes (this resets the worker's global RNGs, which nothing else here uses).
        keras.utils.set_random_seed(spec.seed)
        weights: str | None = None
    elif spec.weights == WEIGHTS_IMAGENET:
        weights = WEIGHTS_IMAGENET
    else:
        path = local_weights_file(spec.name, spec.weights)
        found = content_weights_id(path)
        if found != spec.weights_id:
            raise BackboneError(
                f"backbone {spec.name}: weights {spec.weights!r} changed since the run started "
                f"({found} != {spec.weights_id})"
            )
        weights = str(path)
    try:
        model = constructor(weights=weights, **kwargs)
    except Exception as exc:
        raise BackboneError(
            f"backbone {spec.name}: cannot load weights {spec.weights!r}: {type(exc).__name__}: {exc}"
        ) from exc
    out_dim = int(model.output_shape[-1])
    if out_dim != spec.feature_dim:
        raise BackboneError(
            f"backbone {spec.name}: model gives {out_dim}-d features, expected {spec.feature_dim}"
        )
    return model


_model_lock = threading.Lock()
_models: dict[tuple[str, str, bool], Any] = {}


def load_model(spec: BackboneSpec, mixed_precision: bool = False) -> Any:
    """The model of `spec`, built once per Python process and cached (Spark reuses its Python workers)."""
    key = (spec.name, spec.weights_id, mixed_precision)
    with _model_lock:
        if key not in _models:
            import keras

            # The policy is global to Keras: set it both ways so one model's choice never leaks into the next.
            keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
            _models[key] = build_model(spec)
        return _models[key]


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image to (size, size, 3), ignoring aspect ratio.

    This is what keras.utils.load_img(target_size=...) does, so features match the usual Keras recipe.
    """
    from PIL import Image

    if rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def preprocess(spec: BackboneSpec, images: list[np.ndarray]) -> np.ndarray:
    """Stack (size, size, 3) uint8 images and apply the family's preprocessing → float32 batch."""
    batch = np.stack(images).astype(np.float32)
    return preprocess_function(spec)(batch)
