"""Pause points: inert by default, exact names, partition thresholds, and a pause that a test can end."""

from __future__ import annotations

import threading
import time

from molescope.core import failpoints


def test_points_are_inert_unless_named(monkeypatch):
    monkeypatch.delenv(failpoints.ENV_PAUSE_AT, raising=False)
    assert not failpoints.wanted("publish:images")
    monkeypatch.setenv(failpoints.ENV_PAUSE_AT, "publish:images")
    assert failpoints.wanted("publish:images")
    assert not failpoints.wanted("publish:quarantine")
    monkeypatch.setenv(failpoints.ENV_PAUSE_AT, "task:featurize@2")
    assert [failpoints.wanted("task:featurize", p) for p in range(4)] == [False, False, True, True]
    assert not failpoints.wanted("task:featurize")


def test_pause_waits_until_its_marker_is_removed(monkeypatch, tmp_path):
    monkeypatch.setenv(failpoints.ENV_PAUSE_AT, "write:t")
    monkeypatch.setenv(failpoints.ENV_PAUSE_DIR, str(tmp_path))
    paused = threading.Thread(target=failpoints.pause, args=("write:t",))
    paused.start()
    deadline = time.monotonic() + 10
    while not list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    (marker,) = tmp_path.iterdir()
    assert marker.name.startswith("write:t.") and paused.is_alive()
    marker.unlink()
    paused.join(timeout=10)
    assert not paused.is_alive()
