"""Progress lines with counts and rates, for task logs that people watch."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("molescope.core.progress")


@dataclass
class Progress:
    """Counts items and logs `done/total` with the rate, at most once per `every_s` seconds."""

    label: str
    total: int | None = None
    every_s: float = 10.0
    done: int = 0
    _start: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < self.every_s:
                return
            self._last = now
        log.info(self.line())

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return self.done / elapsed

    def line(self) -> str:
        of_total = f"/{self.total}" if self.total is not None else ""
        elapsed = time.monotonic() - self._start
        return f"{self.label}: {self.done}{of_total} done, {self.rate():.1f}/s, {elapsed:.1f}s elapsed"

    def finish(self) -> str:
        line = self.line()
        log.info(line)
        return line
