"""The cost table of a test session (docs/testing.md, "What the tests cost"), printed at its end: per test
file and per fixture wider than a test, the wall time, the CPU time of pytest and of every process the
session started (services, spark-submit JVMs, Airflow components and their tasks, Spark executors on the
cluster), and how many JVMs, spark-submits and Airflow components each started.

The session's processes are found by an environment variable every one of them inherits (a Spark executor
from its worker, an Airflow task from its executor; PostgreSQL, started with a reset environment, is not
seen), sampled from /proc twice a second: a process that lives less than that may be missed, which no JVM
or Airflow component does. A fork is not a start: a process whose parent runs the same command line is
counted with its parent. Under pytest-xdist each worker samples its own processes and the controller
prints the sum (then the walls of two files overlap in time).
"""

from __future__ import annotations

import os
import resource
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: Every process the session starts inherits this variable; its value names the session (one per worker).
TAG_VARIABLE = "PYTEST_MOLESCOPE_SESSION"
SAMPLE_EVERY_S = 0.5
#: A process this young that does not carry the tag may not have run its own program yet.
PRE_EXEC_S = 2.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
AIRFLOW_COMPONENTS = {"api-server", "scheduler", "dag-processor", "triggerer", "celery"}
#: Columns of the table after wall and CPU: what each row paid for.
KINDS = {"jvm": "JVMs", "spark-submit": "spark-submits", "airflow": "Airflow starts"}
SHOWN_ROWS = 40


@dataclass
class Cost:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    tests: int = 0
    starts: Counter = field(default_factory=Counter)

    def add(self, other: Cost) -> None:
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.tests += other.tests
        self.starts.update(other.starts)

    def as_json(self) -> dict:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "tests": self.tests, "starts": dict(self.starts)}

    @classmethod
    def from_json(cls, data: dict) -> Cost:
        return cls(data["wall_s"], data["cpu_s"], data["tests"], Counter(data["starts"]))


def kinds_of(cmdline: list[str]) -> list[str]:
    """What a new process counts as: a JVM (and a spark-submit), an Airflow component, or nothing."""
    if not cmdline:
        return []
    if Path(cmdline[0]).name == "java":
        return ["jvm", "spark-submit"] if "org.apache.spark.deploy.SparkSubmit" in cmdline else ["jvm"]
    program = next((i for i, arg in enumerate(cmdline[:3]) if Path(arg).name == "airflow"), None)
    if program is not None and AIRFLOW_COMPONENTS & set(cmdline[program + 1 : program + 2]):
        return ["airflow"]
    return []


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # the process is gone, or not ours to read
        return b""


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(parent pid, start time in ticks, CPU seconds used) of a live process."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # the command name may hold spaces and ')'
    cpu_ticks = int(fields[11]) + int(fields[12])
    return fields[1].decode(), int(fields[19]), cpu_ticks / TICKS_PER_S


def _age_s(start_ticks: int) -> float:
    return float(_read("/proc/uptime").split()[0]) - start_ticks / TICKS_PER_S


def _cmdline(pid: str) -> list[str]:
    return [arg.decode(errors="replace") for arg in _read(f"/proc/{pid}/cmdline").split(b"\0") if arg]


class Sampler:
    """Charges the CPU and the starts of the session's processes to what runs now (a file, fixtures)."""

    def __init__(self, tag: str, enabled: bool = True):
        self._marker = f"{TAG_VARIABLE}={tag}".encode()
        self._known: dict[tuple[str, int], float | None] = {}  # (pid, start) -> CPU seen; None: not ours
        self._self_cpu = self._own_cpu()
        self._lock = threading.Lock()
        self._charged: list[Cost] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if enabled:
            self._thread.start()

    @staticmethod
    def _own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def charge(self, costs: list[Cost]) -> None:
        with self._lock:
            self._charged = costs

    def stop(self) -> None:
        """Stop sampling, after a last sample."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.sample()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.sample()

    def sample(self) -> None:
        cpu, starts = self._own_cpu() - self._self_cpu, Counter()
        self._self_cpu += cpu
        for pid in filter(str.isdigit, os.listdir("/proc")):
            stat = _stat(pid)
            if stat is None:
                continue
            key = (pid, stat[1])
            if key not in self._known and not self._first_sight(key, stat[0], starts):
                continue
            if self._known[key] is not None:
                cpu += stat[2] - self._known[key]
                self._known[key] = stat[2]
        with self._lock:
            for cost in self._charged:
                cost.cpu_s += cpu
                cost.starts.update(starts)

    def _first_sight(self, key: tuple[str, int], parent: str, starts: Counter) -> bool:
        """Whether `key` is known now (ours or not). A process seen between fork and exec still shows its
        parent's environment: one younger than PRE_EXEC_S that is not ours is looked at again next time."""
        pid = key[0]
        if self._marker not in _read(f"/proc/{pid}/environ").split(b"\0"):
            if _age_s(key[1]) < PRE_EXEC_S:
                return False
            self._known[key] = None
            return True
        cmdline = _cmdline(pid)
        if cmdline != _cmdline(parent):  # a fork runs its parent's command: not a start
            starts.update(kinds_of(cmdline))
        self._known[key] = 0.0
        return True


class CostTable:
    """The pytest plugin: a Cost per test file and per fixture set up, wider than a test, by name."""

    def __init__(self, config: pytest.Config):
        self.config = config
        tag = uuid.uuid4().hex
        os.environ[TAG_VARIABLE] = tag
        self.files: dict[str, Cost] = {}
        self.fixtures: dict[str, Cost] = {}
        self.outside = Cost()  # collection, and what runs between tests
        self.running = self.outside  # the Cost of the test file that runs now
        self.setting_up: list[Cost] = []  # the fixtures being set up now, outermost first
        self.started = time.monotonic()
        # An xdist controller runs no test: its workers sample (else it would count their CPU twice).
        self.controller = config.getoption("dist", "no") != "no" and not hasattr(config, "workerinput")
        self.elapsed_s = 0.0
        self.sampler = Sampler(tag, enabled=not self.controller)
        self.sampler.charge([self.outside])

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        cost = self.files.setdefault(item.nodeid.split("::")[0], Cost())
        cost.tests += 1
        self.running = cost
        self.sampler.charge([cost])
        started = time.monotonic()
        try:
            return (yield)
        finally:
            cost.wall_s += time.monotonic() - started
            self.running = self.outside
            self.sampler.charge([self.outside])

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        if fixturedef.scope == "function":
            return (yield)
        # Set up for the test that runs now (a session fixture too): charged to that test's file as well,
        # and to every fixture whose setup asked for this one.
        cost = self.fixtures.setdefault(f"{fixturedef.argname} ({fixturedef.scope})", Cost())
        cost.tests += 1  # here: how many times it was set up
        self.setting_up.append(cost)
        self.sampler.charge([self.running, *self.setting_up])
        started = time.monotonic()
        try:
            return (yield)
        finally:
            cost.wall_s += time.monotonic() - started
            self.setting_up.pop()
            self.sampler.charge([self.running, *self.setting_up])

    def pytest_sessionfinish(self, session):
        self.sampler.stop()
        self.elapsed_s = time.monotonic() - self.started
        if not self.controller:
            self.outside.wall_s = self.elapsed_s - sum(cost.wall_s for cost in self.files.values())
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller prints
            workeroutput["molescope_costs"] = {
                "files": {name: cost.as_json() for name, cost in self.files.items()},
                "fixtures": {name: cost.as_json() for name, cost in self.fixtures.items()},
                "outside": self.outside.as_json(),
            }

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        costs = getattr(node, "workeroutput", {}).get("molescope_costs")
        if costs is None:
            return
        for table, rows in ((self.files, costs["files"]), (self.fixtures, costs["fixtures"])):
            for name, row in rows.items():
                table.setdefault(name, Cost()).add(Cost.from_json(row))
        self.outside.add(Cost.from_json(costs["outside"]))

    def pytest_terminal_summary(self, terminalreporter):
        if getattr(self.config, "workeroutput", None) is not None:
            return
        total = Cost()
        for cost in [*self.files.values(), self.outside]:
            total.add(cost)
        total.wall_s = self.elapsed_s  # under xdist the files' walls overlap: their sum is more
        write = terminalreporter.write_line
        terminalreporter.section("what the tests cost (tests/costs.py)")
        for title, rows in (("test file", self.files), ("fixture (scope), setup only", self.fixtures)):
            write(_header(title))
            ranked = sorted(rows.items(), key=lambda kv: -kv[1].wall_s)
            for name, cost in ranked[:SHOWN_ROWS]:
                write(_row(name, cost))
            if len(ranked) > SHOWN_ROWS:
                write(f"... {len(ranked) - SHOWN_ROWS} more")
        write(_row("outside tests (collection, between tests; per worker)", self.outside))
        write(_row("whole session", total))


def _header(title: str) -> str:
    columns = "".join(f"{name:>15}" for name in ("wall s", "CPU s", "tests/setups", *KINDS.values()))
    return f"\n{title:<60}{columns}"


def _row(name: str, cost: Cost) -> str:
    counts = "".join(f"{cost.starts.get(kind, 0):>15}" for kind in KINDS)
    return f"{name[-60:]:<60}{cost.wall_s:>15.0f}{cost.cpu_s:>15.0f}{cost.tests:>15}{counts}"


def register(config: pytest.Config) -> None:
    """Add the table to this session (Linux only: elsewhere the session runs without it)."""
    if Path("/proc/self/stat").exists():
        config.pluginmanager.register(CostTable(config), "molescope-costs")
