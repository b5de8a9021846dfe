"""Print the unit-test folders of the molescope packages changed since main (`make test-quick`).

Changed = committed since BASE (the first argument; default: the merge base with `origin/main`, else
`main`), staged, unstaged or untracked. `jobs/molescope/<package>/...` and `tests/unit/<package>/...` select
`tests/unit/<package>`; a changed DAG, plugin or `core` file selects `tests/dags` (the registry in `core` is
what the DAGs render). The test modules at the top of tests/unit (extension contracts, cost table, live
groups) are always selected: they are quick and span the packages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "tests" / "unit"


def _git(*args: str) -> list[str]:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.split() if done.returncode == 0 else []


def changed_files(base: str | None) -> set[str]:
    if base is None:
        refs = ("origin/main", "main")
        main = next((ref for ref in refs if _git("rev-parse", "--verify", "-q", ref)), "HEAD")
        base = (_git("merge-base", "HEAD", main) or ["HEAD"])[0]
    return {
        *_git("diff", "--name-only", base),
        *_git("ls-files", "--others", "--exclude-standard"),
    }


def selected_tests(changed: set[str]) -> list[str]:
    """tests/unit/<package> for every changed package (existing folders only), tests/dags when DAG-facing."""
    selected = {str(path.relative_to(REPO)) for path in UNIT.glob("test_*.py")}
    for name in changed:
        parts = Path(name).parts
        in_package = parts[:2] in (("jobs", "molescope"), ("tests", "unit")) and len(parts) > 3
        package = parts[2] if in_package else None
        if package and (UNIT / package).is_dir():
            selected.add(f"tests/unit/{package}")
        if parts[:1] in (("dags",), ("plugins",)) or package == "core":
            selected.add("tests/dags")
    return sorted(selected)


if __name__ == "__main__":
    sys.stdout.write(
        " ".join(selected_tests(changed_files(sys.argv[1] if len(sys.argv) > 1 else None))) + "\n"
    )
