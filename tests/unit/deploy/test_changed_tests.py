"""scripts/changed_tests.py: which unit tests `make test-quick` runs for a change."""

from __future__ import annotations

import subprocess
import sys

from scripts.changed_tests import REPO, selected_tests

ALWAYS = {
    "tests/unit/test_cost_table.py",
    "tests/unit/test_extension_contracts.py",
    "tests/unit/test_live_groups.py",
}


def test_a_changed_module_selects_its_package_tests_only():
    assert set(selected_tests({"jobs/molescope/stages/train.py"})) == ALWAYS | {"tests/unit/stages"}
    assert set(selected_tests({"tests/unit/io/test_s3.py"})) == ALWAYS | {"tests/unit/io"}


def test_what_the_dags_render_selects_the_dag_tests():
    core = selected_tests({"jobs/molescope/core/registry/models.py"})
    assert set(core) == ALWAYS | {"tests/unit/core", "tests/dags"}
    assert set(selected_tests({"dags/skin_lesion_pipeline.py", "plugins/x.py"})) == ALWAYS | {"tests/dags"}


def test_a_change_outside_the_packages_selects_only_the_cross_package_tests():
    assert set(selected_tests({"docs/testing.md", "README.md", "jobs/molescope/__init__.py"})) == ALWAYS


def test_the_script_prints_paths_that_exist():
    out = subprocess.run(
        [sys.executable, "scripts/changed_tests.py", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(out) >= ALWAYS
    assert all((REPO / path).exists() for path in out), out
