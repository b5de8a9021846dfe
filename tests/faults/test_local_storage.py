"""A local warehouse that refuses writes: a full disk, a folder the stage may not write. The re-run fails with
one line naming the path and the cause, and the batch's published rows stay as they were."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.faults import published
from tests.faults.conftest import BATCH, clean_args
from tests.faults.published import Warehouse

pytestmark = pytest.mark.faults

#: The tmpfs a disk-full run writes to: room for the copied warehouse, then filled up.
TMPFS_SIZE = "16m"
#: Root without the capabilities to bypass file modes: a read-only folder refuses it as any user.
NO_DAC_CAPS = "-dac_override,-dac_read_search"
NO_DAC_OVERRIDE = ("setpriv", "--bounding-set", NO_DAC_CAPS, "--inh-caps", NO_DAC_CAPS, "--")


def isolated(command: str) -> tuple[str, ...]:
    """`unshare` in a private mount namespace (as root, or in a user namespace otherwise)."""
    user = () if os.geteuid() == 0 else ("--user", "--map-root-user")
    return ("unshare", *user, "--mount", "--", "bash", "-c", command, "bash")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def java_frames(text: str) -> list[str]:
    """The lines of Java stack frames in a stage's log (`\tat org.apache...`, `\t... 43 more`)."""
    return re.findall(r"^\s+(?:at [\w$.]+\(|\.\.\. \d+ more)", text, re.MULTILINE)


def disk_full_script(mount: Path, source: Path, after: Path) -> str:
    """Bash: a tmpfs holding a copy of the warehouse, filled up; run the stage; copy the content out."""
    return (
        f"set -e; mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {mount}; cp -a {source}/. {mount}/; "
        f"dd if=/dev/zero of={mount}/filler bs=64k 2>/dev/null || true; set +e; "
        f'"$@"; status=$?; rm -f {mount}/filler; cp -a {mount}/. {after}/; exit $status'
    )


def test_disk_full_fails_with_one_line_and_keeps_the_batch(stages, reference, batches, tmp_path):
    """The re-clean runs on a full filesystem (a tmpfs in the process's own mount namespace holding a copy
    of the warehouse); afterwards the filesystem's content is copied out and checked."""
    source = reference.copy(tmp_path / "source", "curated")
    mount, after = tmp_path / "mount", tmp_path / "after"
    mount.mkdir()
    after.mkdir()
    script = disk_full_script(mount, source, after)
    full = stages.start("clean", *clean_args(batches[BATCH], mount), prefix=isolated(script))
    assert full.wait() == 1, full.tail()
    line = last_line(full.output())
    assert line.startswith("molescope clean: error: cannot write "), line
    assert str(mount) in line and "No space left on device" in line, line
    assert "Traceback" not in full.output()
    # The executors' write tasks fail first: Spark logs each failure, on one line each (log4j2.properties).
    assert "TASK_WRITE_FAILED" in full.output() and java_frames(full.output()) == [], full.tail()
    images, quarantine, summary = published.curated(Warehouse.local(after), BATCH)
    want_images, want_quarantine, want_summary = published.curated(reference.warehouse, BATCH)
    assert (images, quarantine, summary["curated"]) == (want_images, want_quarantine, want_summary["curated"])


def test_permission_denied_fails_with_one_line_and_keeps_the_batch(stages, reference, batches, tmp_path):
    """The curated folder is read-only for the stage (as root: the stage runs without the capability that
    lets root ignore file modes, so the modes apply to it as to any user)."""
    root = reference.copy(tmp_path / "wh", "curated")
    for path in [root / "curated", *(root / "curated").rglob("*")]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    try:
        prefix = NO_DAC_OVERRIDE if os.geteuid() == 0 else ()
        denied = stages.start("clean", *clean_args(batches[BATCH], root), prefix=prefix)
        assert denied.wait() == 1, denied.tail()
        line = last_line(denied.output())
        assert line.startswith("molescope clean: error: cannot write "), line
        # The local filesystem's words for it: Java's "Permission denied", or Hadoop's "Mkdirs failed to
        # create" for the task's output folder.
        assert "Permission denied" in line or "Mkdirs failed to create" in line, line
        images, quarantine, _ = published.curated(Warehouse.local(root), BATCH)
        want_images, want_quarantine, _ = published.curated(reference.warehouse, BATCH)
        assert (images, quarantine) == (want_images, want_quarantine)
    finally:
        for path in [root / "curated", *(root / "curated").rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def test_java_stacks_are_printed_when_asked_for(stages, reference, batches, tmp_path):
    """MOLESCOPE_JAVA_STACKS=full keeps the Java stacks available to whoever debugs a storage fault; the
    last line is the same one-line error."""
    source = reference.copy(tmp_path / "source", "curated")
    mount, after = tmp_path / "mount", tmp_path / "after"
    mount.mkdir()
    after.mkdir()
    script = disk_full_script(mount, source, after)
    env = {"MOLESCOPE_JAVA_STACKS": "full"}
    full = stages.start("clean", *clean_args(batches[BATCH], mount), prefix=isolated(script), env=env)
    assert full.wait() == 1, full.tail()
    assert last_line(full.output()).startswith("molescope clean: error: cannot write "), full.tail()
    assert len(java_frames(full.output())) > 20, full.tail()


def test_a_successful_clean_of_a_glob_named_folder_logs_no_java_stack(stages, batches, tmp_path):
    """A folder named `batch[1]` is read literally; Spark's probe for a streaming sink's metadata folder
    there used to log a FileNotFoundException with ~74 frames on every such run."""
    batch = tmp_path / "landing" / "batch[1]"
    shutil.copytree(batches[BATCH], batch)
    done = stages.run("clean", *clean_args(batch, tmp_path / "wh"))
    assert java_frames(done.output()) == [] and "FileNotFoundException" not in done.output(), done.tail()
    assert '"stage": "clean"' in last_line(done.output())
