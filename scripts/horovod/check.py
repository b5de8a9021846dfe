"""Set-up check (`make setup`, docker/spark/Dockerfile): Horovod loads its TensorFlow ops, has Gloo, and a
one-process allreduce through those ops returns its input. Exits non-zero with one line otherwise."""

from __future__ import annotations

import os
import sys


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines are not news here
    try:
        import horovod
        import horovod.spark  # molescope.distributed.launch.launch runs the ranks through it
        import horovod.tensorflow as hvd
        import tensorflow as tf
    except ImportError as error:
        print(f"horovod check: import failed: {error}", file=sys.stderr)
        return 1
    if not hvd.gloo_built():
        print("horovod check: built without Gloo", file=sys.stderr)
        return 1
    hvd.init()
    total = hvd.allreduce(tf.constant([1.0, 2.0]), op=hvd.Sum, name="setup_check")
    if hvd.size() != 1 or total.numpy().tolist() != [1.0, 2.0]:
        print(f"horovod check: allreduce of [1, 2] on {hvd.size()} rank(s) gave {total}", file=sys.stderr)
        return 1
    print(f"setup: horovod {horovod.__version__} (Gloo, TensorFlow {tf.__version__} ops): ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
