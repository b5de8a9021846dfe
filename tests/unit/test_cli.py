"""molescope CLI: a setting that cannot run is refused at parse time with one line naming it (exit 2)."""

from __future__ import annotations

import pytest

from molescope import cli

TRAIN = ["train", "--train-set", "t", "--features", "f", "--out", "o"]


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
        cli.parse_settings([*TRAIN, *args])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("molescope: error: train: ") and names in error
    assert "Traceback" not in capsys.readouterr().err


def test_good_settings_parse():
    _, _, settings = cli.parse_settings([*TRAIN, "--models", "lr,finetune", "--curated", "c"])
    assert settings.models == ("lr", "finetune") and settings.finetune_input_size == 224
