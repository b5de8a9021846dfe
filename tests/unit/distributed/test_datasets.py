"""molescope.distributed.datasets: the ready-made `make_dataset` factories the Horovod ranks use."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from molescope.distributed import datasets
from molescope.features.backbones import resolve_backbone
from tests.conftest import HAM10000, require

SEED = 7


def test_image_batches_decode_shuffle_and_augment_per_epoch():
    """`ImageBatches` (finetune rows for the ranks): every row once per epoch, augmented and reshuffled per
    epoch when training; fixed order, no augmentation otherwise."""
    blobs = [p.read_bytes() for p in sorted((require(HAM10000) / "images").glob("*.jpg"))[:5]]
    table = pa.table({"image": blobs, "label": list(range(5)), "weight": [1.0, 2.0, 1.0, 1.0, 1.0]})
    spec = resolve_backbone("resnet50", "random", seed=SEED)
    small = datasets.ImageBatches(replace(spec, input_size=32), 2, seed=SEED)
    train, evaluation = small(table, True), small(table, False)
    assert len(train) == len(evaluation) == 3
    x, _, w = train[0]
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32 and len(w) == 2
    assert sorted(int(label) for i in range(3) for label in train[i][1]) == list(range(5))
    before = [train[i][0] for i in range(3)]
    train.on_epoch_end()
    assert not all(np.allclose(a, b) for a, b in zip(before, (train[i][0] for i in range(3)), strict=True))
    plain = evaluation[0]
    assert len(plain) == 2 and list(plain[1]) == [0, 1]  # no weights, file order
    np.testing.assert_array_equal(plain[0], evaluation[0][0])
