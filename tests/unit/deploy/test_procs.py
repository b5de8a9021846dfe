"""scripts/procs.sh, the process bookkeeping of `make demo` and `make cluster`: it stops what it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def procs(state: Path, script: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "MOLESCOPE_STATE": str(state)}
    return subprocess.run(
        ["bash", "-c", f". {REPO / 'scripts' / 'procs.sh'} && {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def test_stop_ends_the_launched_process_group(tmp_path):
    procs(tmp_path, "launch sleeper bash -c 'sleep 300 & sleep 300'")
    pid = int((tmp_path / "pids" / "sleeper.pid").read_text())
    children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert "sleeper: running" in procs(tmp_path, "status").stdout
    procs(tmp_path, "stop_all")
    time.sleep(0.5)
    assert not alive(pid) and not any(alive(child) for child in children)
    assert not list((tmp_path / "pids").iterdir())


def test_a_reused_pid_is_never_signalled(tmp_path):
    """After a reboot or crash the recorded pid may belong to another program: it must survive `stop`."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        pids = tmp_path / "pids"
        pids.mkdir()
        (pids / "old.pid").write_text(f"{stranger.pid}\n")
        (pids / "old.start").write_text("1\n")  # what the recorded process started at: not the stranger
        assert "old: dead" in procs(tmp_path, "status").stdout
        procs(tmp_path, "stop_all")
        assert alive(stranger.pid)
        assert not (pids / "old.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_the_shell_scripts_import_what_the_package_has():
    """The Python the shell scripts run inline (`python -c '...'`, heredocs) is no module the linters and
    import-linter see: each molescope import there must resolve (a moved module broke `make demo`'s S3
    readiness check once)."""
    statement = re.compile(r"\bfrom (molescope[\w.]*) import ([\w, ]+)")
    scripts = sorted([*(REPO / "scripts").rglob("*.sh"), *(REPO / "docker").rglob("*.sh")])
    found = {m.group(0).strip() for path in scripts for m in statement.finditer(path.read_text())}
    assert any("molescope.io import s3" in s for s in found), found  # the check sees the inline imports
    done = subprocess.run([sys.executable, "-c", "\n".join(sorted(found))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
