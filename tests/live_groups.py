"""Run the live test packages side by side, one pytest session per group: `python -m tests.live_groups ARGS`.

The live packages spend most of their wall time waiting on JVM starts, schedulers and Celery hand-offs, and
share nothing but the machine (each has its own S3 server, Airflow home, ports and temp folders), so `make
test LIVE_PARALLEL=1` runs them at the same time (off by default: docs/testing.md). A package's session
fixtures (the scenario's Airflow, the cluster, the fault suite's reference run) must be set up once, so a
group is a set of whole packages: each session gets the same arguments plus `--live-group NAME`
(tests/conftest.py deselects the rest). pytest-xdist's `--dist loadgroup` would do this, but with pytest 9 its
group marks are lost (xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads), so the groups ran
every package on every worker.

Each session writes to a log of its own; a log is printed whole when its session ends. The exit status is
the first failing session's; 5 (nothing selected) only when no session selected anything.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Live package -> its group. The browser test's Airflow is small: it runs before the fault suite.
LIVE_GROUPS = {"integration": "integration", "cluster": "cluster", "browser": "faults", "faults": "faults"}
NOTHING_SELECTED = 5
PROGRESS_EVERY_S = 300


def _commands(args: list[str]) -> dict[str, list[str]]:
    """One pytest command per group; a `--cpu-burn` load is started by the first session only."""
    burn = [arg for arg in args if arg.startswith("--cpu-burn")]
    rest = [arg for arg in args if not arg.startswith("--cpu-burn")]
    groups = dict.fromkeys(LIVE_GROUPS.values())
    return {
        group: [sys.executable, "-m", "pytest", *rest, *(burn if i == 0 else []), f"--live-group={group}"]
        for i, group in enumerate(groups)
    }


def _status(codes: dict[str, int]) -> int:
    failed = [code for code in codes.values() if code not in (0, NOTHING_SELECTED)]
    if failed:
        return failed[0]
    return NOTHING_SELECTED if set(codes.values()) == {NOTHING_SELECTED} else 0


def main(args: list[str]) -> int:
    logs = Path(tempfile.mkdtemp(prefix="molescope-live-"))
    started = time.monotonic()
    running = {}
    for group, cmd in _commands(args).items():
        log = (logs / f"{group}.log").open("w")
        running[group] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"live group {group}: started (log {logs / f'{group}.log'})", flush=True)

    def forward(signum, frame):  # CI's time limit: every session tears its services down
        for proc, _ in running.values():
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes: dict[str, int] = {}
    last_note = started
    while len(codes) < len(running):
        for group, (proc, log) in running.items():
            if group not in codes and proc.poll() is not None:
                codes[group] = proc.returncode
                log.close()
                minutes = (time.monotonic() - started) / 60
                print(f"\n===== live group {group}: exit {proc.returncode} after {minutes:.1f} min =====")
                print((logs / f"{group}.log").read_text(errors="replace"), flush=True)
        if time.monotonic() - last_note > PROGRESS_EVERY_S:
            last_note = time.monotonic()
            waiting = ", ".join(group for group in running if group not in codes)
            minutes = (last_note - started) / 60
            print(f"live groups still running after {minutes:.0f} min: {waiting}", flush=True)
        time.sleep(1)
    print(f"live groups: {codes} in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    return _status(codes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
