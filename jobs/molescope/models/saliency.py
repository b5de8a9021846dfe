"""Where a model looked: Grad-CAM maps for the models whose class scores are linear in the backbone's
global-average-pooled last feature map.

That is every model here but the tree ensembles and the mlp head: the fine-tune (image → backbone → dropout,
inactive when predicting → [metadata] → dense) and the frozen-feature lr (features → [standardise] → [PCA]
→ multinomial logistic regression). For them Grad-CAM (Selvaraju et al. 2017) is exact and needs no
backward pass: with pooled features f_k = mean_ij A_k(i, j) and a class score y_c = Σ_k W_kc f_k + const,
∂y_c / ∂A_k(i, j) = W_kc / (H·W) at every position, so Grad-CAM's weights are α_kc = W_kc / (H·W) and its map
ReLU(Σ_k α_kc A_k) is CAM (Zhou et al. 2016) up to a positive factor. `linear_weights` gives W (feature_dim
× 7) for such a model (None for the others), `SaliencyModel` computes the maps of a batch of images in one
forward pass of the backbone's convolutional part. TensorFlow is imported inside functions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from molescope.features.backbones import BackboneSpec, build_model, preprocess_function
from molescope.models.finetune import spec_from_dict
from molescope.models.trained import TrainedModel

#: Images per forward pass.
SALIENCY_BATCH = 32
#: Why a model type has no maps (tree ensembles, non-linear heads).
NOT_LINEAR = (
    "no saliency maps for {name}: its class scores are not linear in the backbone's pooled features "
    "(Grad-CAM here is exact for the fine-tune and lr)"
)


def _dense_weights(keras_model: Any, feature_dim: int) -> np.ndarray:
    """The fine-tune's `dx` layer kernel rows of the backbone features (metadata rows follow them)."""
    kernel = np.asarray(keras_model.get_layer("dx").get_weights()[0], dtype=np.float64)
    return kernel[:feature_dim]


def _pipeline_weights(pipeline: Any, feature_dim: int) -> np.ndarray | None:
    """∂ logits / ∂ features of a Spark pipeline [StandardScaler] → [PCA] → multinomial LR, or None when its
    classifier is not a logistic regression."""
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.feature import PCAModel, StandardScalerModel

    *preprocessing, classifier = pipeline.stages
    if not isinstance(classifier, LogisticRegressionModel):
        return None
    weights = classifier.coefficientMatrix.toArray().T  # (input width × classes)
    for stage in reversed(preprocessing):
        if isinstance(stage, PCAModel):
            weights = stage.pc.toArray() @ weights
        elif isinstance(stage, StandardScalerModel):
            std = stage.std.toArray()
            scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0) if stage.getWithStd() else 1.0
            weights = weights * np.reshape(scale, (-1, 1))
    return weights[:feature_dim]


def linear_weights(trained: TrainedModel, feature_dim: int) -> np.ndarray | None:
    """W (feature_dim × classes): each class score's gradient with respect to the backbone's pooled
    features, or None when it is not constant (the model is not linear in them)."""
    if trained.scores_images and trained.keras_model is not None:
        return _dense_weights(trained.keras_model, feature_dim)
    if trained.pipeline is not None and trained.keras_model is None:
        return _pipeline_weights(trained.pipeline, feature_dim)
    return None


def convolutional_part(pooled_backbone: Any) -> Any:
    """The Keras model of the backbone's last feature map: `build_model`'s pooling="avg" backbone up to
    the input of its final GlobalAveragePooling2D."""
    import keras

    pooling = pooled_backbone.layers[-1]
    if not isinstance(pooling, keras.layers.GlobalAveragePooling2D):
        raise ValueError(f"backbone {pooled_backbone.name} does not end in global average pooling")
    return keras.Model(pooled_backbone.inputs, pooling.input, name=f"{pooled_backbone.name}_maps")


def nested_backbone(keras_model: Any) -> Any:
    """The backbone model inside a fine-tuned network (its only nested Keras model)."""
    import keras

    nested = [layer for layer in keras_model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"{keras_model.name}: expected one nested backbone, found {len(nested)}")
    return nested[0]


@dataclass
class SaliencyModel:
    """The maps of one model: its backbone's convolutional part, input size, preprocessing and W."""

    maps: Any
    spec: BackboneSpec
    weights: np.ndarray

    def evidence(self, pixels: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(n, h, w) Σ_k W_kc A_k: the evidence for class `classes[i]` at each position of the uint8 image
        `pixels[i]` (n, size, size, 3). Its mean over the positions is the class score minus what does not
        depend on the image (bias, metadata)."""
        import tensorflow as tf

        preprocess = preprocess_function(self.spec)
        out = []
        for start in range(0, len(pixels), SALIENCY_BATCH):
            batch = tf.cast(tf.constant(pixels[start : start + SALIENCY_BATCH]), tf.float32)
            features = np.asarray(self.maps(preprocess(batch), training=False), dtype=np.float64)
            chosen = self.weights[:, classes[start : start + SALIENCY_BATCH]].T  # (b, k)
            out.append(np.einsum("bhwk,bk->bhw", features, chosen))
        return np.concatenate(out) if out else np.zeros((0, 1, 1))

    def class_maps(self, pixels: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The Grad-CAM maps: ReLU of `evidence`, each divided by its maximum (all zero where no position
        has positive evidence), in [0, 1]."""
        cams = np.maximum(self.evidence(pixels, classes), 0.0)
        peak = cams.max(axis=(1, 2), keepdims=True)
        return np.divide(cams, peak, out=np.zeros_like(cams), where=peak > 0)


def saliency_model(trained: TrainedModel, backbone: BackboneSpec | None) -> SaliencyModel | str:
    """The SaliencyModel of `trained` (`backbone`: a feature model's, None for a fine-tune), or why it has
    none (a sentence for the page)."""
    if trained.scores_images:
        spec = spec_from_dict(trained.sidecar["params"]["backbone_spec"])
    elif backbone is not None:
        spec = backbone
    else:
        return f"no saliency maps for {trained.name}: no backbone to compute them with"
    try:
        weights = linear_weights(trained, spec.feature_dim)
        if weights is None:
            return NOT_LINEAR.format(name=trained.name)
        pooled = nested_backbone(trained.keras_model) if trained.scores_images else build_model(spec)
        return SaliencyModel(convolutional_part(pooled), spec, weights)
    except ValueError as error:
        # A network saved by hand (no `dx` layer, no nested backbone): scored, but without maps.
        return f"no saliency maps for {trained.name}: not a network molescope built ({error})"
