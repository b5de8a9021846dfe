"""A fit's time budget: estimate the whole fit from its first measured steps, fail at once when it cannot fit.

The train task runs under an execution timeout (`registry.STAGE_TIMEOUTS`; the DAG passes it as `molescope
train --time-budget`). A fit that cannot end inside it should say so in its first minute, not be killed after
90: `StepClock` times the first steps of the first epoch on the worker's own device (the step that traces
the graph is not timed), estimates the fit's wall time from that per-image cost, logs it, and raises an
`InputError` naming the estimate and the knobs when it exceeds what is left of the budget. Without a budget
it only logs the estimate. An estimate that cannot be made (an epoch of one step) is logged as such and the
fit goes on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from molescope.core.errors import InputError

log = logging.getLogger(__name__)

#: Timed steps before the estimate (after the untimed first step, which traces the graph).
CALIBRATION_STEPS = 3
#: Validation images cost this fraction of a training image (a forward pass, no augmentation or gradients;
#: measured ~0.5 for MobileNet-0.25 on 2 CPU cores).
VALIDATION_COST = 0.5
#: What to change when the estimate does not fit, in the error line.
KNOBS = (
    "a smaller --backbone (mobilenet_0.25 on CPU), fewer --finetune-epochs, --finetune-unfreeze top, "
    "a smaller --finetune-input-size or --finetune-max-images, fewer --models, or a GPU pool"
)


def device() -> str:
    """Where TensorFlow computes: `GPU x<n>` or `CPU (<n> cores)`."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return f"GPU x{len(gpus)}" if gpus else f"CPU ({os.cpu_count()} cores)"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


@dataclass
class StepClock:
    """Times the first epoch's steps and checks the fit's estimated wall time against `deadline`.

    `images`: training images in the whole fit (epochs × samples per epoch); `validation_images`: images
    predicted for validation in the whole fit; `deadline`: `time.monotonic()` by which the task must end, or
    None (estimate logged only).
    """

    what: str
    images: int
    validation_images: int
    deadline: float | None
    timed: list[tuple[float, int]] = field(default_factory=list)
    _last: float | None = None
    done: bool = False

    def step(self, batch_images: int) -> None:
        """Call after each training step of the first epoch (cheap once the estimate is made)."""
        if self.done:
            return
        now = time.monotonic()
        if self._last is not None:
            self.timed.append((now - self._last, batch_images))
        self._last = now
        if len(self.timed) >= CALIBRATION_STEPS:
            self.check()

    def check(self) -> None:
        """Estimate from the steps timed so far and compare it with the budget; also at the first epoch's
        end, for an epoch shorter than the calibration."""
        if self.done:
            return
        self.done = True
        if not self.timed:
            log.info("%s: no time estimate (the first epoch has a single step); no budget check", self.what)
            return
        seconds = sum(s for s, _ in self.timed)
        rate = sum(n for _, n in self.timed) / max(seconds, 1e-9)
        estimate = (self.images + VALIDATION_COST * self.validation_images) / rate
        where = device()
        line = (
            f"{self.what}: ~{minutes(estimate)} estimated ({self.images:,} training images at "
            f"{rate:.1f} img/s on {where}, plus {self.validation_images:,} validation predictions)"
        )
        if self.deadline is None:
            log.info("%s; no time budget given", line)
            return
        left = self.deadline - time.monotonic()
        log.info("%s; %s of the time budget left", line, minutes(left))
        if estimate > left:
            raise InputError(
                f"{line} exceeds the {minutes(left)} left of the train task's time budget: {KNOBS}"
            )
