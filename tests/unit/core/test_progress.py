"""molescope.core.progress: `done/total` with the rate and elapsed time, logged at most once per `every_s`.

The module's clock is replaced by one the test moves by hand, so the counts, rates and throttling are
exact (no sleeping, no timing assertion).
"""

from __future__ import annotations

import logging
import re
import threading
from types import SimpleNamespace

import pytest

from molescope.core import progress
from molescope.core.progress import Progress

LOGGER = "molescope.core.progress"
LINE = re.compile(
    r"^(?P<label>.+): (?P<done>\d+)(?:/(?P<total>\d+))? done, "
    r"(?P<rate>[\d.]+)/s, (?P<elapsed>[\d.]+)s elapsed$"
)


class Clock:
    """A monotonic clock that moves only when told; it starts where a machine up for days would be (the
    first line is due at once: the last one was logged at "0")."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=clock))
    return clock


def logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


def test_line_counts_done_of_total_with_rate_and_elapsed(clock):
    p = Progress("featurize", total=400, _start=clock())
    p.add(150)
    clock.now += 60
    p.add(150)
    assert p.done == 300
    assert p.rate() == pytest.approx(300 / 60)
    assert p.line() == "featurize: 300/400 done, 5.0/s, 60.0s elapsed"


def test_line_without_total(clock):
    p = Progress("land", _start=clock())
    p.add(7)
    clock.now += 2
    assert p.line() == "land: 7 done, 3.5/s, 2.0s elapsed"


def test_rate_before_any_time_has_passed_is_finite(clock):
    p = Progress("x", total=1, _start=clock())
    assert p.rate() == 0
    p.add(1)
    assert p.rate() > 0 and p.line().startswith("x: 1/1 done, ")


def test_logs_at_most_once_per_interval(clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = Progress("clean", total=50, every_s=10, _start=clock())
    start = clock()
    for at in (0, 1, 5, 9.9, 10, 15, 19.99, 21, 40):  # seconds after the start, one item each
        clock.now = start + at
        p.add(1)
    lines = [LINE.match(line) for line in logged(caplog)]
    assert all(lines), logged(caplog)
    # The first add logs at once; then only once 10s have passed since the last line: at 0, 10, 21 and 40.
    assert [(int(m["done"]), float(m["elapsed"])) for m in lines] == [
        (1, 0.0),
        (5, 10.0),
        (8, 21.0),
        (9, 40.0),
    ]
    assert {m["total"] for m in lines} == {"50"} and {m["label"] for m in lines} == {"clean"}
    assert [m["rate"] for m in lines[1:]] == [f"{5 / 10:.1f}", f"{8 / 21:.1f}", f"{9 / 40:.1f}"]


def test_every_add_logs_with_a_zero_interval(clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = Progress("x", every_s=0, _start=clock())
    for _ in range(3):
        p.add(2)
    assert [LINE.match(line)["done"] for line in logged(caplog)] == ["2", "4", "6"]


def test_finish_logs_and_returns_the_final_line_whatever_the_interval(clock, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = Progress("score", total=3, every_s=3600, _start=clock())
    clock.now += 0.5
    p.add(1)
    clock.now += 1
    p.add(2)  # within the interval: not logged
    assert logged(caplog) == ["score: 1/3 done, 2.0/s, 0.5s elapsed"]
    clock.now += 1.5
    final = p.finish()
    assert final == "score: 3/3 done, 1.0/s, 3.0s elapsed"
    assert logged(caplog)[-1] == final


def test_adds_from_many_threads_are_all_counted(caplog):
    """land's upload threads share one Progress: no add is lost."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = Progress("threads", total=8 * 500, every_s=0)

    def work() -> None:
        for _ in range(500):
            p.add(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert p.done == 4000
    assert LINE.match(p.finish())["done"] == "4000"
    assert len(logged(caplog)) == 4000 + 1
