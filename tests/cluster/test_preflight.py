"""The operator's check of a standalone master before spark-submit (no cluster needed: real sockets)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from tests.cluster.conftest import REPO
from tests.helpers import free_port


@pytest.fixture(scope="module")
def unreachable_masters():
    with pytest.MonkeyPatch.context() as mp:  # plugins/ is on the path of the Airflow components only
        mp.syspath_prepend(str(REPO / "plugins"))
        from molescope_airflow.operators import unreachable_masters

        yield unreachable_masters


def test_a_master_that_is_down_is_reported_with_the_reason(unreachable_masters):
    port = free_port()
    (failure,) = unreachable_masters(f"spark://127.0.0.1:{port}", timeout_s=2)
    assert failure.startswith(f"127.0.0.1:{port} (") and "refused" in failure.lower()


def test_a_listening_master_passes_and_ha_lists_only_the_dead_ones(unreachable_masters):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        up = f"127.0.0.1:{server.getsockname()[1]}"
        down = f"127.0.0.1:{free_port()}"
        assert unreachable_masters(f"spark://{up}", timeout_s=2) == []
        assert [f.split(" ")[0] for f in unreachable_masters(f"spark://{up},{down}", timeout_s=2)] == [down]


def test_other_masters_are_not_checked(unreachable_masters):
    for master in ("local[2]", "yarn", "k8s://https://127.0.0.1:1"):
        assert unreachable_masters(master, timeout_s=2) == []


def test_a_malformed_master_url_is_reported(unreachable_masters):
    assert unreachable_masters("spark://no-port", timeout_s=2)


def test_missing_postgresql_is_named_with_its_package_and_setting():
    """`cluster.sh deps` (run by `up` and CI) without PostgreSQL, where it cannot install: one clear line."""
    # A state folder the unprivileged user can write (pytest's tmp_path lies under a root-only folder).
    state = tempfile.mkdtemp(prefix="molescope-deps-")
    os.chmod(state, 0o777)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": state,
        "MOLESCOPE_STATE": state,
        "MOLESCOPE_PG_BIN": "/nonexistent",
    }
    # As an unprivileged user the script may not apt-get: it must say what is missing and stop.
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.getuid() == 0 else []
    done = subprocess.run(
        [*drop, "bash", str(REPO / "scripts" / "cluster.sh"), "deps"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    shutil.rmtree(state, ignore_errors=True)
    assert done.returncode != 0
    assert (
        "cluster: missing: PostgreSQL 15: no /nonexistent/postgres (package postgresql-15; setting "
        "MOLESCOPE_PG_BIN). Install with: apt-get install postgresql-15 redis-server"
    ) in done.stderr, done.stderr
