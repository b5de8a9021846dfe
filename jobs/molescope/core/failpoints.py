"""Named pause points for the fault-injection tests (tests/faults/): inert unless `MOLESCOPE_PAUSE_AT` is set.

A test starts a stage with `MOLESCOPE_PAUSE_AT=<point>` and `MOLESCOPE_PAUSE_DIR=<folder>`. The process that
reaches the point writes `<folder>/<point>.<pid>` (holding its pid) and waits until that file is removed
(the test resumes it) or the process dies (the test kills it, its driver or its JVM): the kill then lands
at a known point instead of after a guessed sleep. Points:

- `write:<table>`: on the driver, before the data of a new version of `<table>` is written;
- `publish:<table>`: on the driver, after every data file is written, before the manifest naming them;
- `collect:<table>`: on the driver, after the manifest is written, before old versions are deleted;
- `task:<job>` (`featurize`, `inspect`): in a Python worker, at the start of a Spark task. `task:<job>@<n>`
  pauses only partitions >= n, so the tasks before them run (and commit) while the others wait.

Off, a point costs one environment lookup.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

ENV_PAUSE_AT = "MOLESCOPE_PAUSE_AT"
ENV_PAUSE_DIR = "MOLESCOPE_PAUSE_DIR"
POLL_S = 0.2


def wanted(point: str, partition: int | None = None) -> bool:
    """True when `MOLESCOPE_PAUSE_AT` names `point` (and, with `@<n>`, `partition` >= n)."""
    setting = os.environ.get(ENV_PAUSE_AT)
    if not setting:
        return False
    name, _, first = setting.partition("@")
    if name != point:
        return False
    return not first or (partition is not None and partition >= int(first))


def pause(point: str, partition: int | None = None) -> None:
    """Wait at `point` while its marker file exists, when the environment asks for it."""
    if not wanted(point, partition):
        return
    folder = Path(os.environ.get(ENV_PAUSE_DIR) or tempfile.gettempdir())
    marker = folder / f"{point}.{os.getpid()}"
    marker.write_text(str(os.getpid()))
    log.warning("paused at %s (pid %d) until %s is removed", point, os.getpid(), marker)
    while marker.exists():
        time.sleep(POLL_S)
