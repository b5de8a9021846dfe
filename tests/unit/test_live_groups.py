"""tests/live_groups.py: one session per group of whole live packages, and the status `make test` sees."""

from __future__ import annotations

import pytest

from tests import live_groups


def test_every_live_package_is_in_one_group_and_each_group_gets_one_session():
    commands = live_groups._commands(["-m", "faults or cluster", "-x"])
    assert set(commands) == set(live_groups.LIVE_GROUPS.values())
    for group, cmd in commands.items():
        assert cmd[-1] == f"--live-group={group}" and cmd[3:6] == ["-m", "faults or cluster", "-x"]


def test_the_cpu_burners_of_make_test_stress_start_once():
    commands = live_groups._commands(["--cpu-burn=2", "-q"])
    assert sum("--cpu-burn=2" in cmd for cmd in commands.values()) == 1


@pytest.mark.parametrize(
    ("codes", "status"),
    [
        ({"integration": 0, "cluster": 0, "faults": 0}, 0),
        ({"integration": 5, "cluster": 0, "faults": 5}, 0),  # one package named: the others select nothing
        ({"integration": 5, "cluster": 5, "faults": 5}, 5),
        ({"integration": 0, "cluster": 1, "faults": 2}, 1),
        ({"integration": 5, "cluster": 0, "faults": 2}, 2),
    ],
)
def test_the_status_is_the_first_failure_and_nothing_selected_only_when_no_group_selected(codes, status):
    assert live_groups._status(codes) == status
