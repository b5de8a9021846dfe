"""On S3 (a private SeaweedFS, the S3A magic committer): two DAG runs' stages on different batches at the same
time, and the S3 server stopped for a few seconds in the middle of a write."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests.faults import published
from tests.faults.conftest import BATCH, FEATURIZE
from tests.faults.published import Warehouse
from tests.faults.s3server import SeaweedFS
from tests.faults.test_kills import assert_same_curated
from tests.helpers import free_port

pytestmark = pytest.mark.faults

#: How long the server stays down while the stage writes.
OUTAGE_S = 5


@pytest.fixture(scope="module")
def s3(tmp_path_factory, batches, reference) -> Iterator[SeaweedFS]:
    """The server, with b1 and b2 landed and the reference's converted engine in features/_engines."""
    if not os.environ.get("MOLESCOPE_JARS_DIR"):
        pytest.fail("MOLESCOPE_JARS_DIR is not set: run the tests through `make` (it sources scripts/env.sh)")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        for batch, folder in batches.items():
            server.upload(folder, f"landing/{batch}")
        server.upload(reference.root / "features" / "_engines", "features/_engines")
        yield server
    finally:
        server.stop()


def s3_clean(server: SeaweedFS, batch_id: str) -> tuple[str, ...]:
    root = f"s3a://{server.bucket}"
    return (
        "--batch-dir",
        f"{root}/landing/{batch_id}",
        "--batch-id",
        batch_id,
        "--curated",
        f"{root}/curated",
        "--no-figures",
    )


def s3_featurize(server: SeaweedFS, batch_id: str) -> tuple[str, ...]:
    root = f"s3a://{server.bucket}"
    return (
        "--curated",
        f"{root}/curated",
        "--features",
        f"{root}/features",
        "--batch-id",
        batch_id,
        *FEATURIZE,
    )


def test_two_batches_at_the_same_time_both_end_correct(stages, s3, reference):
    env = s3.env()
    for name, args in (("clean", s3_clean), ("featurize", s3_featurize)):
        running = [stages.start(name, *args(s3, batch), env=env) for batch in ("b1", "b2")]
        for stage in running:
            stages.succeeded(stage) if stage.wait() == 0 else pytest.fail(f"{stage.name}:\n{stage.tail()}")
    warehouse = Warehouse.s3(s3.client(), s3.bucket)
    assert_same_curated(warehouse, reference.warehouse)
    table = reference.features_table()
    want = published.features(reference.warehouse, table, BATCH)
    got = published.features(warehouse, table, BATCH)
    assert got.keys() == want.keys()
    for image_id, row in want.items():
        np.testing.assert_allclose(got[image_id]["features"], row["features"], atol=1e-6)
    images, quarantine, summary = published.curated(warehouse, "b2")
    assert summary["rows_in"] == len(images) + len(quarantine) and summary["invariant"]["holds"]
    assert set(published.features(warehouse, table, "b2")) == set(images)
    assert not set(images) & set(published.curated(warehouse, BATCH)[0])


def test_s3_outage_during_a_write_retries_or_fails_cleanly_and_a_rerun_is_exact(stages, s3, reference):
    env = s3.env()
    stage = stages.start("clean", *s3_clean(s3, BATCH), pause_at="write:images", env=env)
    stage.wait_paused()
    s3.stop()
    stage.resume()
    time.sleep(OUTAGE_S)
    s3.start()
    if stage.wait() != 0:  # S3A's retries usually outlast the outage; when not, the failure is one line
        assert_one_line_storage_error(stage.output(), "clean", "s3a://")
        stages.run("clean", *s3_clean(s3, BATCH), env=env)
    assert_same_curated(Warehouse.s3(s3.client(), s3.bucket), reference.warehouse)


def elsewhere(args: tuple[str, ...], server: SeaweedFS, bucket: str) -> tuple[str, ...]:
    return tuple(a.replace(f"s3a://{server.bucket}/", f"s3a://{bucket}/") for a in args)


def assert_one_line_storage_error(output: str, stage: str, *named: str) -> None:
    """The run's last line names the stage, the path and the cause; no Python or Java stack before it."""
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"molescope {stage}: error: cannot "), last
    assert "s3a://" in last and last.endswith("(StorageError)"), last
    assert all(part in last for part in named), (named, last)
    assert "Traceback" not in output and not re.search(r"^\s+at [\w$.]+\(", output, re.MULTILINE), output


@pytest.mark.parametrize("stage", ["clean", "featurize"])
@pytest.mark.parametrize("fault", ["bucket missing", "credentials refused"])
def test_storage_refusals_end_in_one_line_naming_stage_path_and_cause(stages, s3, stage, fault):
    args = s3_clean(s3, BATCH) if stage == "clean" else s3_featurize(s3, BATCH)
    env = s3.env()
    if fault == "bucket missing":
        args, cause = elsewhere(args, s3, "no-such-bucket"), "The specified bucket does not exist"
    else:
        env, cause = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "Forbidden"
    failed = stages.start(stage, *args, env=env)
    assert failed.wait() == 1, failed.tail()
    assert_one_line_storage_error(failed.output(), stage, cause)


def test_an_endpoint_nobody_serves_ends_in_one_line_after_the_retries(stages, s3):
    """S3 down for good (nothing listens on the endpoint): S3A retries, then the stage fails in one line."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    failed = stages.start("clean", *s3_clean(s3, BATCH), env={**s3.env(), "MOLESCOPE_S3_ENDPOINT": endpoint})
    assert failed.wait() == 1, failed.tail()
    assert_one_line_storage_error(failed.output(), "clean", f"s3a://{s3.bucket}/")
