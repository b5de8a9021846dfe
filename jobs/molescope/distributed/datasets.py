"""Ready-made `make_dataset` factories for `molescope.distributed.launch`: picklable callables that turn a
rank's shard (a pyarrow table) into indexable batches, reshuffled every epoch when training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from molescope.features.backbones import BackboneSpec


@dataclass(frozen=True)
class FeatureBatches:
    """`make_dataset` for feature-vector rows: columns x (array<float>), y (int), optional weight."""

    batch_size: int
    x_col: str = "x"
    y_col: str = "label"
    weight_col: str | None = "weight"
    shuffle: bool = True
    seed: int = 42

    def __call__(self, table: Any, training: bool) -> Any:
        x = np.stack(table.column(self.x_col).to_numpy(zero_copy_only=False)).astype(np.float32)
        y = table.column(self.y_col).to_numpy().astype(np.int64)
        w = table.column(self.weight_col).to_numpy().astype(np.float32) if self.weight_col else None
        return ArrayBatches(x, y, w, self.batch_size, self.seed if training and self.shuffle else None)


@dataclass(frozen=True)
class ImageBatches:
    """`make_dataset` for `finetune` rows: columns image (JPEG bytes), label, optional weight; decoded one
    batch at a time by finetune_data.image_batch (shuffled and augmented per epoch when training)."""

    spec: BackboneSpec
    batch_size: int
    image_col: str = "image"
    y_col: str = "label"
    weight_col: str | None = "weight"
    seed: int = 42

    def __call__(self, table: Any, training: bool) -> Any:
        labels = table.column(self.y_col).to_numpy().astype(np.int64)
        weighted = training and self.weight_col is not None
        weights = table.column(self.weight_col).to_numpy().astype(np.float32) if weighted else None
        blobs = np.array(table.column(self.image_col).to_pylist(), dtype=object)
        return JpegBatches(
            blobs, labels, weights, self.batch_size, self.seed if training else None, self.spec
        )


class ArrayBatches:
    """Batches of in-memory arrays; reshuffled every epoch when `seed` is given."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, batch_size: int, seed: int | None):
        self.x, self.y, self.w, self.batch_size, self.seed = x, y, w, batch_size, seed
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.y))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = (self.x[rows], self.y[rows])
        return batch if self.w is None else (*batch, self.w[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()


class JpegBatches(ArrayBatches):
    """ArrayBatches over JPEG bytes, decoded (and augmented when training) one batch at a time."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray | None, batch_size: int, seed: int | None,
                 spec: BackboneSpec):  # fmt: skip
        super().__init__(x, y, w, batch_size, seed)
        self.spec = spec

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        from molescope.models.finetune_data import image_batch

        blobs, *rest = super().__getitem__(index)
        draws = None if self.seed is None else (self.seed, self.epoch, index)
        return (image_batch(self.spec, list(blobs), draws), *rest)
