"""Backbone families (keras.applications constructors and their width rules), weights sources and the
featurize inference engines."""

from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------------ backbones, weights


@dataclass(frozen=True)
class Architecture:
    """One keras.applications family: constructor, preprocessing module, input size and width rule."""

    constructor: str
    preprocess_module: str
    input_size: int
    base_dim: int
    #: Width multipliers with ImageNet weights; empty: the family has no width multiplier.
    alphas: tuple[float, ...] = ()

    def feature_dim(self, alpha: float | None) -> int:
        if alpha is None:
            return self.base_dim
        if self.constructor == "MobileNetV2":
            # MobileNetV2 keeps its last 1x1 conv at 1280 channels for alpha <= 1.
            return self.base_dim if alpha <= 1.0 else int(self.base_dim * alpha)
        return int(self.base_dim * alpha)


#: Backbone families by name (`--backbone <family>[_<alpha>]`).
ARCHITECTURES: dict[str, Architecture] = {
    "resnet50": Architecture("ResNet50", "resnet50", 224, 2048),
    "mobilenet": Architecture("MobileNet", "mobilenet", 224, 1024, (0.25, 0.5, 0.75, 1.0)),
    "mobilenetv2": Architecture("MobileNetV2", "mobilenet_v2", 224, 1280, (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    "efficientnetb0": Architecture("EfficientNetB0", "efficientnet", 224, 1280),
    "densenet121": Architecture("DenseNet121", "densenet", 224, 1024),
}
DEFAULT_BACKBONE = "resnet50"
#: Width of a width-scalable family named without a suffix (`mobilenet` = `mobilenet_1`).
DEFAULT_ALPHA = 1.0


def backbone_choices() -> tuple[str, ...]:
    """Every `--backbone` value with ImageNet weights: each family, and `<family>_<alpha>` for its widths."""
    names: list[str] = []
    for family, arch in ARCHITECTURES.items():
        names.append(family)
        names.extend(f"{family}_{alpha:g}" for alpha in arch.alphas if alpha != DEFAULT_ALPHA)
    return tuple(names)


WEIGHTS_IMAGENET = "imagenet"
#: Seeded random initialisation: for plumbing tests and speed benchmarks only.
WEIGHTS_RANDOM = "random"
#: `score --weights` value: derive the weights source from the model's weights_id.
WEIGHTS_AUTO = "auto"
#: `weights_id` of random weights: `random-seed<N>`; of a weights file: `sha256:<16 hex>` of its content.
RANDOM_WEIGHTS_PREFIX = "random-seed"
SHA256_WEIGHTS_PREFIX = "sha256:"

ENGINE_AUTO = "auto"
ENGINE_KERAS = "keras"
ENGINE_LITERT = "litert"
#: featurize's inference engines (molescope.features.engines).
ENGINES: tuple[str, ...] = (ENGINE_AUTO, ENGINE_KERAS, ENGINE_LITERT)
#: Images per inference call.
DEFAULT_BATCH_SIZE = 32
