"""budget.StepClock: the estimate from the first timed steps, and the one-line failure past the deadline."""

from __future__ import annotations

import logging
import time

import pytest

from molescope.core.errors import InputError
from molescope.models import budget


def timed_steps(clock: budget.StepClock, steps: int, seconds: float, batch: int) -> None:
    for _ in range(steps):
        time.sleep(seconds)
        clock.step(batch)


def test_a_fit_that_cannot_end_in_time_fails_after_the_calibration_steps():
    # 3 timed steps of 10 images, each >= 50 ms: <= 200 img/s, so 100,000 images take >= 500 s > 60 s left.
    clock = budget.StepClock("finetune", 100_000, 1_000, time.monotonic() + 60)
    clock.step(10)  # traces the graph: not timed
    with pytest.raises(InputError) as failure:
        timed_steps(clock, budget.CALIBRATION_STEPS, 0.05, 10)
    line = str(failure.value)
    assert "\n" not in line
    assert line.startswith("finetune: ~") and "100,000 training images" in line and "time budget" in line
    assert "--finetune-epochs" in line and "--backbone" in line and "GPU pool" in line
    assert f"on {budget.device()}" in line
    assert len(clock.timed) == budget.CALIBRATION_STEPS


def test_a_fit_that_fits_goes_on_and_logs_its_estimate(caplog):
    clock = budget.StepClock("finetune", 1_000, 100, time.monotonic() + 600)
    with caplog.at_level(logging.INFO, logger=budget.__name__):
        timed_steps(clock, budget.CALIBRATION_STEPS + 5, 0.01, 100)
    assert clock.done and len(clock.timed) == budget.CALIBRATION_STEPS  # later steps are not timed
    (message,) = [r.getMessage() for r in caplog.records]
    assert "estimated (1,000 training images" in message and "of the time budget left" in message


def test_without_a_budget_the_estimate_is_only_logged(caplog):
    clock = budget.StepClock("finetune", 10**9, 0, None)
    with caplog.at_level(logging.INFO, logger=budget.__name__):
        timed_steps(clock, budget.CALIBRATION_STEPS + 1, 0.01, 1)
    assert "no time budget given" in caplog.records[0].getMessage()


def test_an_epoch_of_one_step_says_no_estimate_can_be_made(caplog):
    clock = budget.StepClock("finetune", 10**9, 0, time.monotonic() - 1)  # deadline already passed
    with caplog.at_level(logging.INFO, logger=budget.__name__):
        clock.step(8)
        clock.check()  # the epoch's end
    assert clock.done and "no time estimate" in caplog.records[0].getMessage()


def test_a_short_epoch_is_checked_at_its_end():
    clock = budget.StepClock("finetune", 10**9, 0, time.monotonic() + 1)
    timed_steps(clock, 2, 0.01, 1)  # one timed step, fewer than the calibration
    with pytest.raises(InputError, match="exceeds"):
        clock.check()
