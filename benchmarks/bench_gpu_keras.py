"""ResNet50 end-to-end throughput on one GPU: JPEG bytes → decode → resize → preprocess → features.

Runs the featurize stage's per-image path (`molescope.io.imaging.decode_rgb`,
`molescope.features.backbones.resize_rgb` and `preprocess`, the same Keras model) without Spark, decoding on a
thread pool that feeds one GPU: what one GPU executor of the featurize stage can reach. For machines without
Java/Spark (e.g. a lent GPU box) Keras 3 runs on whichever backend is installed
(KERAS_BACKEND=jax|torch|tensorflow).

    python benchmarks/bench_gpu_keras.py --images DIR [--limit N] [--batch-size 256] [--mixed-precision]

Prints (a) end-to-end images/s including file read and JPEG decode, (b) model-only images/s on the same
preprocessed tensors, and the ratio a/b.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))

from molescope.features.backbones import build_model, preprocess, resize_rgb, resolve_backbone
from molescope.io.imaging import decode_rgb


def load_and_prepare(spec, paths: list[Path]) -> np.ndarray:
    return preprocess(spec, [resize_rgb(decode_rgb(p.read_bytes()), spec.input_size) for p in paths])


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--decode-threads", type=int, default=max(2, (os.cpu_count() or 2) - 2))
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the images (warm caches)")
    return parser.parse_args()


def print_devices(keras) -> None:
    """The accelerators the Keras backend sees (JAX and PyTorch; TensorFlow logs its own)."""
    if keras.backend.backend() == "jax":
        import jax

        print("devices:", jax.devices())
    elif keras.backend.backend() == "torch":
        import torch

        print(
            "cuda:",
            torch.cuda.is_available(),
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        )


def warm_up(spec, model, batches: list[list[Path]]) -> None:
    """Compile for the full batch shape (and the last partial one) outside the timings."""
    warm = load_and_prepare(spec, batches[0])
    model.predict_on_batch(warm)
    if len(batches[-1]) != len(batches[0]):
        model.predict_on_batch(load_and_prepare(spec, batches[-1]))


def end_to_end_pass(spec, model, batches: list[list[Path]], threads: int) -> tuple[float, int, np.ndarray]:
    """(images/s from file read to features, images, the last batch's features) of one pass."""
    started = time.perf_counter()
    n = 0
    with ThreadPoolExecutor(threads) as pool:
        # Decode ahead of the GPU: at most 2x the thread count of batches in flight.
        pending = [pool.submit(load_and_prepare, spec, b) for b in batches[: 2 * threads]]
        nxt = len(pending)
        for i in range(len(batches)):
            x = pending[i].result()
            if nxt < len(batches):
                pending.append(pool.submit(load_and_prepare, spec, batches[nxt]))
                nxt += 1
            features = np.asarray(model.predict_on_batch(x))
            n += len(features)
    return n / (time.perf_counter() - started), n, features


def model_only_pass(spec, model, batches: list[list[Path]], threads: int, n: int) -> float:
    """Images/s of the model alone, on the pass's images preprocessed beforehand."""
    with ThreadPoolExecutor(threads) as pool:
        tensors = list(pool.map(lambda b: load_and_prepare(spec, b), batches))
    started = time.perf_counter()
    for x in tensors:
        np.asarray(model.predict_on_batch(x))
    return n / (time.perf_counter() - started)


def main() -> None:
    args = parse_args()

    import keras

    paths = sorted(args.images.rglob("*.jpg"))
    if args.limit:
        paths = paths[: args.limit]
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    spec = resolve_backbone(args.backbone, "random")
    model = build_model(spec)
    print(
        f"keras {keras.__version__} backend={keras.backend.backend()} images={len(paths)} "
        f"batch={args.batch_size} decode_threads={args.decode_threads} mixed={args.mixed_precision}"
    )
    print_devices(keras)

    batches = chunks(paths, args.batch_size)
    warm_up(spec, model, batches)

    for rep in range(args.repeat):
        end_to_end, n, features = end_to_end_pass(spec, model, batches, args.decode_threads)
        model_only = model_only_pass(spec, model, batches, args.decode_threads, n)
        print(
            f"pass {rep + 1}: (a) end-to-end {end_to_end:,.0f} img/s  "
            f"(b) model-only {model_only:,.0f} img/s  "
            f"a/b {end_to_end / model_only:.2f}  features {features.shape[1]}-d"
        )


if __name__ == "__main__":
    main()
