"""Real `molescope` processes for the fault tests: start a stage, wait at a pause point, kill what a
test names.

A stage runs as `python -m molescope.cli --master local[2] <stage> ...` in its own session (process group),
so a test can SIGKILL the driver, its JVM or one Python worker, and the fixture's clean-up can always reap
every process it started. Kill points come from `molescope.failpoints`: the stage writes a marker file at a
named point and waits there, so a kill lands at a known place instead of after a guessed sleep.
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

from molescope.failpoints import ENV_PAUSE_AT, ENV_PAUSE_DIR

#: A tiny stage on a loaded 2-core machine: JVM start, Python workers, a few Spark jobs.
STAGE_TIMEOUT_S = 600
POLL_S = 0.2


def stage_command(stage: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "molescope.cli", "--master", "local[2]", stage, *args]


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
        """The driver's JVM (local mode: also the executor)."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.name() == "java":
                return child
        raise AssertionError(f"{self.name}: no JVM below pid {self.proc.pid}")

    def kill(self, target: str) -> int:
        """SIGKILL `driver` (the molescope process), `jvm` or `worker` (the paused Python worker); its pid."""
        if target == "driver":
            pid = self.proc.pid
        elif target == "jvm":
            pid = self.jvm().pid
        elif target == "worker":
            pid = int(self.wait_paused().read_text())
        else:
            raise ValueError(target)
        os.kill(pid, signal.SIGKILL)
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
                [*prefix, *stage_command(stage, *args)],
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
