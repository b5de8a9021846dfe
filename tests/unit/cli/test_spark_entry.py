"""molescope/cli/spark_entry.py, the file spark-submit (and so the DAG) runs, behaves exactly like
`python -m molescope.cli`: run both as processes, compare exit status, stdout, stderr and files written.

The file is run as a script (`python <file>`), as spark-submit's PythonRunner does: its own folder, not the
repository, is first on sys.path then. The path is the one the DAG factory submits
(`molescope.core.paths.SPARK_APPLICATION`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from molescope.core.paths import SPARK_APPLICATION

TIMEOUT_S = 180
#: The log lines' timestamps and durations differ between two runs; nothing else may.
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.M)
DURATION = re.compile(r"\bin \d+\.\d+s\b|\"(?:seconds|elapsed_s)\": [\d.]+")


def launch(runner: list[str], args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*runner, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def both(tmp_path: Path, args: list[str]) -> dict[str, tuple[int, str, str]]:
    """(exit status, stdout, stderr) of the entry file and of `-m molescope.cli`, each run in a folder of its
    own (relative paths in `args` land there); started together, the machine has two cores."""
    runners = {
        "spark_entry": [sys.executable, str(SPARK_APPLICATION)],
        "module": [sys.executable, "-m", "molescope.cli"],
    }
    procs = {}
    for name, runner in runners.items():
        (tmp_path / name).mkdir()
        procs[name] = launch(runner, args, tmp_path / name)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=TIMEOUT_S)
        results[name] = (proc.returncode, out, DURATION.sub("<duration>", TIMESTAMP.sub("", err)))
    return results


def test_the_entry_file_is_where_the_dag_submits_it():
    assert SPARK_APPLICATION.is_file()
    assert SPARK_APPLICATION.name == "spark_entry.py" and SPARK_APPLICATION.parent.name == "cli"


def test_help_is_the_same(tmp_path):
    results = both(tmp_path, ["--help"])
    status, out, err = results["spark_entry"]
    assert status == 0, err
    assert out.startswith("usage: molescope ")
    for command in ("clean", "featurize", "upsample", "train", "report", "score", "synth", "land"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command
    assert results["spark_entry"] == results["module"]


def test_a_local_command_writes_the_same_files_and_summary(tmp_path):
    args = ["synth", "--out", "batch", "--images", "40", "--width", "64", "--height", "48", "--seed", "3"]
    results = both(tmp_path, args)
    status, _, err = results["spark_entry"]
    assert status == 0, err
    assert results["spark_entry"] == results["module"]
    summary = [line for line in err.splitlines() if "summary {" in line]
    assert len(summary) == 1 and '"stage": "synth"' in summary[0] and '"rows": 40' in summary[0]

    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }

    written = files(tmp_path / "spark_entry" / "batch")
    assert "HAM10000_metadata.csv" in written
    assert sum(name.endswith(".jpg") for name in written) == 40
    assert written == files(tmp_path / "module" / "batch")


@pytest.mark.parametrize(
    ("args", "status", "last_line"),
    [
        (
            ["land", "--source", "missing", "--dest", "s3a://bucket/landing/b1"],
            1,
            "molescope land: error: batch folder not found: missing (FileNotFoundError)",
        ),
        (["synth"], 2, "molescope synth: error: the following arguments are required: --out"),
        ([], 2, "molescope: error: the following arguments are required: command"),
    ],
    ids=["own-error", "missing-option", "no-command"],
)
def test_errors_end_the_same_way(tmp_path, args, status, last_line):
    results = both(tmp_path, args)
    code, out, err = results["spark_entry"]
    assert (code, out) == (status, "")
    assert err.strip().splitlines()[-1] == last_line
    assert "Traceback" not in err
    assert results["spark_entry"] == results["module"]
