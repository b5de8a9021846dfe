"""Shared fixtures and session set-up: a small local SparkSession, paths to the real data in ../shared
(tests only), a marker per test package (fast unit + DAG tests run before the live ones), and the CPU
burner of `make test-stress` (`--cpu-burn N`)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import costs
from tests.live_groups import LIVE_GROUPS

# Spark's Python workers must run this interpreter (it has molescope and the pinned libraries installed).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
#: The JVMs the tests start (spark-submit drivers, Spark daemons and executors, Airflow tasks' drivers) live
#: for seconds to minutes on tiny inputs, where C2 compilation costs more CPU than it saves: C1 only halves a
#: trivial spark-submit's CPU (22 -> 13 s) and cuts a 40-image clean by a third (docs/testing.md). The JIT
#: tier changes no result. The session's own long-lived JVM (the `spark` fixture) keeps the full JIT.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"
os.environ.setdefault("JAVA_TOOL_OPTIONS", TEST_JVM_OPTIONS)

REPO = Path(__file__).resolve().parents[1]
#: Real HAM10000 data for tests and benchmarks; the product never depends on it.
SHARED = Path(os.environ.get("MOLESCOPE_SHARED", REPO.parent / "shared"))
HAM10000 = SHARED / "data" / "ham10000"
HAM10000_FULLSIZE = SHARED / "data" / "ham10000_600x450_sample"
MOBILENET_025_WEIGHTS = SHARED / "models" / "mobilenet_2_5_224_tf_no_top.h5"
#: In CI the real data is part of the machine: missing data is an error there, a skip on a laptop.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Test package -> marker, in the order `make test` runs them: fast first, live (Spark/Airflow) last.
PACKAGE_MARKERS = {
    "unit": "unit",
    "dags": "dags",
    "browser": "browser",
    "integration": "integration",
    "cluster": "cluster",
    "faults": "faults",
}


def require(path: Path) -> Path:
    if not path.exists():
        message = f"real data not available at {path} (set MOLESCOPE_SHARED or provide <repo>/../shared)"
        if IN_CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return path


def pytest_sessionstart(session):
    from tests import helpers

    plugins = session.config.pluginmanager
    terminal, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if terminal is not None and capture is not None:

        def terminal_line(line: str) -> None:  # progress of a long wait, shown as it happens
            with capture.global_and_fixture_disabled():
                terminal.write_line(line)
                terminal.flush()

        helpers.terminal_line = terminal_line
    if IN_CI and not SHARED.is_dir():
        raise pytest.UsageError(
            f"CI=true but the real test data is missing: {SHARED} does not exist. "
            "CI machines provide ../shared (or MOLESCOPE_SHARED); without it the data tests would be skipped."
        )


def _package(item) -> str | None:
    """`unit`, `dags`, ... for tests/<package>/test_x.py; None elsewhere."""
    path, tests = Path(str(item.path)), REPO / "tests"
    if not path.is_relative_to(tests):
        return None
    parts = path.relative_to(tests).parts
    return parts[0] if len(parts) > 1 else None


def pytest_collection_modifyitems(config, items):
    """Mark each test with its package's marker; run fast packages first (a stable sort keeps file order);
    with `--live-group NAME` (tests/live_groups.py) keep only that group's live packages."""
    order = list(PACKAGE_MARKERS)
    for item in items:
        package = _package(item)
        if package in PACKAGE_MARKERS:
            item.add_marker(PACKAGE_MARKERS[package])
    items.sort(key=lambda item: order.index(p) if (p := _package(item)) in order else -1)
    group = config.getoption("--live-group")
    if group:
        dropped = [item for item in items if LIVE_GROUPS.get(_package(item)) != group]
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if LIVE_GROUPS.get(_package(item)) == group]


# -- `--cpu-burn N`: the busy machine of `make test-stress` ---------------------------------------------

#: One busy core; it ends by itself when pytest is gone (no orphan burner on a shared machine).
BURN_LOOP = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-burn",
        type=int,
        default=0,
        metavar="N",
        help="keep N busy-loop processes running for the whole session (a loaded machine); 0: none",
    )
    parser.addoption(
        "--live-group",
        choices=sorted(set(LIVE_GROUPS.values())),
        help="run only this group's live packages (tests/live_groups.py runs the groups side by side)",
    )


class LoadRecorder:
    """Samples the 1-minute load average during the session; reports it with the session's CPU time.

    The CPU time (pytest plus every process it started and reaped: services, tasks, Spark JVMs) hardly
    depends on what else runs on the machine: with the load average it lets timings from a busy machine
    be compared with a quiet one (docs/testing.md)."""

    def __init__(self, every_s: float = 10.0):
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        self._stop.set()
        mean = sum(self.samples) / len(self.samples)
        used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu_s = sum(u.ru_utime + u.ru_stime for u in used)
        return (
            f"load average (1 min) over the session: start {self.samples[0]:.2f}, mean {mean:.2f}, "
            f"max {max(self.samples):.2f}, end {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); "
            f"CPU time of pytest and the processes it started: {cpu_s:.0f}s"
        )


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # A CI time limit or `kill` sends SIGTERM: turn it into pytest's own interrupt so the session fixtures'
    # teardown still stops the services they started (each runs in a session of its own and would outlive us).
    signal.signal(signal.SIGTERM, _interrupt)
    config._molescope_load = LoadRecorder()
    costs.register(config)
    burners = config.getoption("--cpu-burn", 0)
    config._molescope_burners = [
        subprocess.Popen([sys.executable, "-c", BURN_LOOP, str(os.getpid())]) for _ in range(burners)
    ]


def pytest_unconfigure(config):
    for proc in getattr(config, "_molescope_burners", []):
        proc.kill()
        proc.wait()


def pytest_terminal_summary(terminalreporter, config):
    burners = len(getattr(config, "_molescope_burners", []))
    if burners:
        terminalreporter.write_line(f"CPU burner: {burners} busy-loop process(es) ran for the whole session")
    if hasattr(config, "_molescope_load"):
        terminalreporter.write_line(config._molescope_load.summary())


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the unit tests: 2 threads, small shuffles, UTC."""
    from molescope.io.session import get_spark

    short_lived = os.environ.get("JAVA_TOOL_OPTIONS") == TEST_JVM_OPTIONS
    if short_lived:  # this JVM serves the whole session: full JIT (measured: C1 only was 8 % slower)
        del os.environ["JAVA_TOOL_OPTIONS"]
    try:
        session = get_spark(
            "molescope-tests",
            master="local[2]",
            extra_conf={
                "spark.sql.shuffle.partitions": "4",
                "spark.default.parallelism": "2",
                "spark.driver.memory": "2g",
                "spark.ui.enabled": "false",
            },
        )
    finally:
        if short_lived:
            os.environ["JAVA_TOOL_OPTIONS"] = TEST_JVM_OPTIONS
    yield session
    session.stop()
