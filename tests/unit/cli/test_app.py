"""The CLI's contracts: a setting that cannot run is refused at parse time with one line naming it (exit 2);
the project's own errors are one line naming the input and the problem (exit 1), the traceback only with
--debug or in the log file; anything else keeps its traceback."""

from __future__ import annotations

import logging

import pytest

from molescope.cli import app
from molescope.core.errors import StorageError
from molescope.distributed.common import DistributedTrainingError

TRAIN = ["train", "--train-set", "t", "--features", "f", "--out", "o"]


@pytest.fixture(autouse=True)
def restore_logging():
    """cli.main configures the root logger for its process (a handler on the stderr of the moment: here
    pytest's capture, closed after the test); later log records of the session must not reach it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def land(tmp_path, *flags: str) -> list[str]:
    return [*flags, "land", "--source", str(tmp_path / "missing"), "--dest", "s3a://bucket/landing/b1"]


def test_own_error_is_one_line_with_exit_status_1(tmp_path, capsys):
    assert app.main(land(tmp_path)) == app.EXIT_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    missing = tmp_path / "missing"
    assert err[-1] == f"molescope land: error: batch folder not found: {missing} (FileNotFoundError)"
    assert not any("Traceback" in line for line in err)


def test_debug_raises_and_the_log_file_keeps_the_traceback(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="batch folder not found"):
        app.main(land(tmp_path, "--debug"))
    log = tmp_path / "molescope.log"
    assert app.main(land(tmp_path, "--log-file", str(log))) == app.EXIT_ERROR
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "batch_files" in text


def test_a_bad_setting_is_one_line(capsys):
    argv = ["clean", "--batch-dir", "d", "--batch-id", "../up", "--curated", "c"]
    assert app.main(argv) == app.EXIT_ERROR
    assert "invalid batch id '../up'" in capsys.readouterr().err.strip().splitlines()[-1]


def test_what_counts_as_the_projects_own_error():
    assert app.is_own_error(StorageError("cannot write x: IOException: No space left on device"))
    with pytest.raises(ValueError, match="invalid literal") as outside:
        int("not a number")  # raised outside molescope: a bug, it keeps its traceback
    assert not app.is_own_error(outside.value)
    assert app.is_own_error(DistributedTrainingError("rank 1 failed: RuntimeError: injected"))


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--models", "lr,foo"], "unknown models ['foo']"),
        (["--models", "finetune", "--curated", "c", "--finetune-input-size", "5000"], "5000: must be <="),
        (["--models", "finetune", "--curated", "c", "--finetune-epochs", "0"], "--finetune-epochs"),
        (["--models", "finetune"], "needs --curated"),
        (["--models", "lr", "--metadata"], "--metadata needs --curated"),
    ],
)
def test_bad_settings_fail_at_parse_time_with_one_line(capsys, args, names):
    with pytest.raises(SystemExit) as raised:
        app.parse_settings([*TRAIN, *args])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("molescope: error: train: ") and names in error
    assert "Traceback" not in capsys.readouterr().err


def test_good_settings_parse():
    _, _, settings = app.parse_settings([*TRAIN, "--models", "lr,finetune", "--curated", "c"])
    assert settings.models == ("lr", "finetune") and settings.finetune_input_size == 224
