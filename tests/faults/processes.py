"""Real `molescope` processes for the fault tests: start a stage, wait at a pause point, kill what a
test names.

A stage runs as `python -m molescope.cli --master local[2] <stage> ...` in its own session (process group),
so a test can SIGKILL the driver, its JVM or one Python worker, and the fixture's clean-up can always reap
every process it started. Kill points come from `molescope.core.failpoints`: the stage writes a marker file at
a named point and waits there, so a kill lands at a known place instead of after a guessed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from molescope.core.failpoints import ENV_PAUSE_AT, ENV_PAUSE_DIR

#: A tiny stage on a loaded 2-core machine: JVM start, Python workers, a few Spark jobs.
STAGE_TIMEOUT_S = 600
POLL_S = 0.2


#: Spark master of a stage: the driver's JVM runs the tasks.
LOCAL = "local[2]"
#: A master and a worker inside the driver's JVM, and 2 executors of 1 core, each its own JVM (the worker's
#: child): what a stage sees on a standalone cluster, where a worker's executor can die on its own.
LOCAL_CLUSTER = "local-cluster[2,1,1024]"


def stage_command(stage: str, *args: str, master: str = LOCAL) -> list[str]:
    return [sys.executable, "-m", "molescope.cli", "--master", master, stage, *args]


def gone(pid: int, timeout_s: float = 60) -> None:
    """Wait until `pid` has died (a zombie its parent has not reaped yet counts as dead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(POLL_S)
    raise AssertionError(f"process {pid} still runs {timeout_s:.0f}s after SIGKILL")


@dataclass
class Stage:
    """One running stage process and where its log and pause markers go."""

    name: str
    proc: subprocess.Popen
    log: Path
    pause_dir: Path
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_paused(self, timeout_s: float = STAGE_TIMEOUT_S) -> Path:
        """The first marker a process of this stage wrote at its pause point (fails if the stage ends)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            markers = sorted(self.pause_dir.glob("*.*"))
            if markers:
                return markers[0]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} ended ({self.proc.returncode}) before pausing:\n{self.tail()}"
                )
            time.sleep(POLL_S)
        raise AssertionError(f"{self.name} did not pause within {timeout_s:.0f}s:\n{self.tail()}")

    def markers(self) -> list[Path]:
        return sorted(self.pause_dir.glob("*.*"))

    def resume(self) -> None:
        for marker in self.markers():
            marker.unlink()

    def jvm(self) -> psutil.Process:
        """The driver's JVM (local mode: also the executor); executor JVMs are its children."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.name() == "java" and child.parent().name() != "java":
                return child
        raise AssertionError(f"{self.name}: no JVM below pid {self.proc.pid}")

    def executor(self) -> psutil.Process:
        """The executor JVM running the paused Python worker (under LOCAL_CLUSTER: not the driver's JVM)."""
        worker = psutil.Process(int(self.wait_paused().read_text()))
        jvm = next((p for p in worker.parents() if p.name() == "java"), None)
        if jvm is None or jvm.pid == self.jvm().pid:
            raise AssertionError(f"{self.name}: the paused worker {worker.pid} runs in no executor JVM")
        return jvm

    def kill(self, target: str) -> int:
        """SIGKILL `driver` (the molescope process), `jvm`, `executor` (the JVM running the paused Python
        worker, LOCAL_CLUSTER) or `worker` (the paused Python worker); its pid."""
        if target == "driver":
            pid = self.proc.pid
        elif target == "jvm":
            pid = self.jvm().pid
        elif target == "executor":
            pid = self.executor().pid
        elif target == "worker":
            pid = int(self.wait_paused().read_text())
        else:
            raise ValueError(target)
        os.kill(pid, signal.SIGKILL)
        if target == "jvm":
            # The paused Python process (the driver, or workers whose JVM is gone) sleeps in the pause and
            # would never notice: once the JVM is gone, let it go on, to meet the dead JVM.
            gone(pid)
            self.resume()
        return pid

    def wait(self, timeout_s: float = STAGE_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.name} did not end within {timeout_s:.0f}s:\n{self.tail()}") from None

    def stop(self) -> None:
        """Kill every process of the stage's session that is still there (driver, JVM, workers)."""
        members = []
        for process in psutil.process_iter(["pid"]):
            try:
                if os.getsid(process.pid) == self.proc.pid:
                    members.append(process)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        for process in members:
            try:
                process.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(members, timeout=30)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


class Stages:
    """Starts stage processes with one environment and reaps them all at the end (a fixture holds one)."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.env = env
        self.folder = folder
        self.started: list[Stage] = []

    def start(
        self,
        stage: str,
        *args: str,
        pause_at: str | None = None,
        env: dict | None = None,
        prefix: tuple[str, ...] = (),
        master: str = LOCAL,
    ) -> Stage:
        """Start `molescope <stage> <args>` (under `prefix`, e.g. `unshare ...`), paused at `pause_at`."""
        n = len(self.started)
        pause_dir = self.folder / f"pause-{n}"
        pause_dir.mkdir(parents=True)
        log = self.folder / f"{n:02d}-{stage}.log"
        environment = {**self.env, **(env or {}), ENV_PAUSE_DIR: str(pause_dir)}
        environment.pop(ENV_PAUSE_AT, None)
        if pause_at:
            environment[ENV_PAUSE_AT] = pause_at
        with log.open("w") as handle:
            proc = subprocess.Popen(
                [*prefix, *stage_command(stage, *args, master=master)],
                env=environment,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.folder,
            )
        run = Stage(f"{stage} #{n}", proc, log, pause_dir)
        self.started.append(run)
        return run

    def run(self, stage: str, *args: str, env: dict | None = None) -> Stage:
        """Run a stage to its end; AssertionError with its log unless it succeeds."""
        done = self.start(stage, *args, env=env)
        return self.succeeded(done)

    @staticmethod
    def succeeded(done: Stage) -> Stage:
        if done.wait() != 0:
            raise AssertionError(f"{done.name} failed ({done.proc.returncode}):\n{done.tail()}")
        return done

    def stop_all(self) -> None:
        for stage in self.started:
            stage.stop()
