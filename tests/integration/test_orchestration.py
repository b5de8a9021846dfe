"""Orchestration end to end: daily batches through Airflow, a backfill with a missing day, idempotent re-runs.

Costs four-and-a-bit pipeline runs on tiny synthetic batches (40 images, MobileNet-0.25, LR only):

1. `airflow dags test <DAY1>` and `<DAY2>`: each run ingests landing/<logical date>/, and the second run's
   training sees both batches.
2. With a real api-server + scheduler + dag-processor + triggerer:
   - a manual run for a batch that has not landed defers on the triggerer, and resumes when it lands;
   - `airflow backfill create --from-date <DAY0> --to-date <DAY1> --reprocess-behavior completed`: DAY0 has
     no batch (its run is skipped, not failed), DAY1's run is cleared and re-run: it rewrites DAY1's
     partitions and its own run prefix only (DAY2's partitions and run untouched);
   - each `train` announces its champion (asset event); the scoring DAG runs on it and scores the batch
     waiting in scoring/ with exactly that model and the run's weights file.

Everything lives in a bucket of its own, so the other end-to-end tests in the session see none of it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import MOBILENET_025_WEIGHTS, require
from tests.integration.conftest import free_port, json_rows

pytestmark = pytest.mark.integration

DAG_ID = "skin_lesion_pipeline"
BUCKET = "molescope-orch"
DAY0, DAY1, DAY2 = "2026-11-19", "2026-11-20", "2026-11-21"
IMAGES = 40
DAG_TIMEOUT_S = 1200
SCORING_DAG = "skin_lesion_scoring"
#: A manual run whose batch lands while it waits on the triggerer.
LATE, LATE_RUN = "late-batch", "manual__late-batch"
#: A batch in scoring/ that every new champion scores.
SCORING_BATCH = "clinic-1"
#: The triggerer looks for a missing batch this often (the DAG's default is 300 s).
POKE_S = 5
DEFER_TIMEOUT_S = 240
LIVE_TIMEOUT_S = 1800
SCORING_TIMEOUT_S = 900


#: SQLite allows one writer: a CLI call that meets the scheduler's write transaction fails with this.
SQLITE_LOCKED = "database is locked"
LOCKED_RETRIES = 5


def run(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output; retried while SQLite is locked by the scheduler."""
    for attempt in range(LOCKED_RETRIES):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0 or SQLITE_LOCKED not in done.stderr + done.stdout:
            break
        time.sleep(2 + 2 * attempt)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd[:5])} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    return done


def synth_batch(root: Path, seed: int, id_offset: int, env: dict[str, str]) -> Path:
    """A tiny synthetic batch whose image ids start at ISIC_<offset> (synth reuses ids across seeds)."""
    out = root / f"batch-{seed}"
    run(
        [
            "molescope",
            "synth",
            "--out",
            str(out),
            "--images",
            str(IMAGES),
            "--seed",
            str(seed),
            "--width",
            "200",
            "--height",
            "150",
        ],
        env,
    )
    if id_offset:
        renamed: dict[str, str] = {}
        for image in out.rglob("ISIC_*"):
            number = int(image.stem.split("_")[1]) + id_offset
            new_id = f"ISIC_{number:07d}"
            renamed[image.stem] = new_id
            image.rename(image.with_name(new_id + image.suffix))
        metadata = next(out.rglob("*.csv"))
        text = metadata.read_text()
        for old, new in renamed.items():
            text = text.replace(old, new)
        metadata.write_text(text)
    return out


def land(batch: Path, prefix: str, env: dict[str, str]) -> None:
    run(["molescope", "land", "--source", str(batch), "--dest", f"s3a://{BUCKET}/{prefix}"], env)


def parquet_rows(s3, prefix: str) -> int:
    keys = [k for k in keys_of(s3, prefix) if k.endswith(".parquet")]
    return sum(pq.read_metadata(io.BytesIO(get(s3, k))).num_rows for k in keys)


def keys_of(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def snapshot(s3, prefix: str) -> dict[str, str]:
    """key -> LastModified of every object under prefix (what a rewrite changes)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["LastModified"].isoformat() for p in pages for o in p.get("Contents", [])}


def get(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def run_prefix_for(s3, logical_day: str) -> str:
    """The runs/<run>/ prefix whose params.json has the given logical date."""
    found = []
    for key in keys_of(s3, "runs/"):
        if key.endswith("/params.json"):
            prefix = key.rsplit("/", 1)[0]
            doc = json.loads(get(s3, key))
            if (doc.get("logical_date") or "").startswith(logical_day):
                found.append(prefix)
    assert len(found) == 1, f"expected one run for {logical_day}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def orch_env(s3_server, pipeline_env) -> dict[str, str]:
    client = s3_server.client()
    with contextlib.suppress(Exception):
        client.create_bucket(Bucket=BUCKET)
    env = {
        **pipeline_env,
        "MOLESCOPE_BUCKET": BUCKET,
        "MOLESCOPE_WAREHOUSE": f"s3a://{BUCKET}",
        "AIRFLOW_VAR_MOLESCOPE_WAREHOUSE": f"s3a://{BUCKET}",
        # Past days without a batch are skipped at once; the scheduler's own latest run too.
        "MOLESCOPE_BATCH_WAIT_HOURS": "0",
    }
    return env


@pytest.fixture(scope="module")
def conf(s3_server, orch_env) -> dict:
    weights = require(MOBILENET_025_WEIGHTS)
    s3_server.client().upload_file(str(weights), BUCKET, "models/mobilenet_0.25.h5")
    return {
        "backbone": "mobilenet_0.25",
        "weights": f"s3a://{BUCKET}/models/mobilenet_0.25.h5",
        "models": ["lr"],
        "upsample": "oversample",
    }


@pytest.fixture(scope="module")
def daily_runs(s3_server, orch_env, conf, tmp_path_factory):
    """Land DAY1 and DAY2, run the DAG for each logical date with `airflow dags test`."""
    root = tmp_path_factory.mktemp("daily")
    for day, seed, offset in ((DAY1, 21, 0), (DAY2, 22, 100_000)):
        batch = synth_batch(root, seed, offset, orch_env)
        land(batch, f"landing/{day}", orch_env)
    logs = {}
    for day in (DAY1, DAY2):
        started = time.monotonic()
        done = run(
            ["airflow", "dags", "test", DAG_ID, day, "--conf", json.dumps(conf)], orch_env, DAG_TIMEOUT_S
        )
        logs[day] = done.stdout + done.stderr
        print(f"\n`airflow dags test {DAG_ID} {day}`: {time.monotonic() - started:.0f}s")
    client = s3_server.client()
    return {day: run_prefix_for(client, day) for day in (DAY1, DAY2)} | {"logs": logs}


def test_each_run_ingests_its_logical_dates_batch(s3_server, daily_runs):
    client = s3_server.client()
    for day in (DAY1, DAY2):
        assert parquet_rows(client, f"curated/images/batch_id={day}/") > 0, day
        recorded = json.loads(get(client, f"{daily_runs[day]}/params.json"))
        assert recorded["params"]["batch"] == day
        assert recorded["params"]["batch_id"] is None  # the logical date named the batch


def test_second_run_trains_on_both_batches(s3_server, daily_runs):
    client = s3_server.client()
    first = json.loads(get(client, f"{daily_runs[DAY1]}/upsample_summary.json"))
    second = json.loads(get(client, f"{daily_runs[DAY2]}/upsample_summary.json"))
    assert first["batches"] == [DAY1]
    assert second["batches"] == [DAY1, DAY2]
    seen = set()
    for key in keys_of(client, f"{daily_runs[DAY2]}/train_set/"):
        if key.endswith(".parquet"):
            seen |= set(
                pq.read_table(io.BytesIO(get(client, key)), columns=["batch_id"]).column(0).to_pylist()
            )
    assert seen == {DAY1, DAY2}
    sidecar_1 = json.loads(get(client, f"{daily_runs[DAY1]}/models/lr/molescope_model.json"))
    sidecar_2 = json.loads(get(client, f"{daily_runs[DAY2]}/models/lr/molescope_model.json"))
    assert sidecar_2["training_set"]["rows"] > sidecar_1["training_set"]["rows"]
    assert "training on 2 of 2 curated batches" in daily_runs["logs"][DAY2]


# -- backfill with a real scheduler ---------------------------------------------------------------------


class AirflowServices:
    """api-server + scheduler + dag-processor on a free port, each in its own session; stop() ends them."""

    def __init__(self, env: dict[str, str], logs: Path):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **env,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "300",
        }
        self.logs = logs
        self.procs: list[tuple[subprocess.Popen, object]] = []

    def start(self, *components: list[str]) -> None:
        for args in components:
            log = (self.logs / f"{args[0]}.log").open("w")
            proc = subprocess.Popen(
                ["airflow", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            self.procs.append((proc, log))
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=3)
                return
            except Exception:
                if time.monotonic() > deadline or any(p.poll() is not None for p, _ in self.procs):
                    pytest.fail(f"Airflow services did not come up; logs in {self.logs}")
                time.sleep(2)

    def stop(self) -> None:
        import psutil

        # Task processes (and their spark-submit) may run in process groups of their own: collect every
        # descendant first, then end the groups we started, then whatever descendant is left.
        descendants = []
        for proc, _ in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(proc.pid).children(recursive=True)
        for proc, _ in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            log.close()
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def task_states(env: dict[str, str], run_id: str) -> dict[str, str]:
    done = run(["airflow", "tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json"], env)
    rows = json_rows(done.stdout)
    return {r["task_id"]: r["state"] for r in rows}


def runs_of(env: dict[str, str], dag_id: str) -> dict[str, dict]:
    """run id -> row of `airflow dags list-runs` (state, logical_date, ...)."""
    done = run(["airflow", "dags", "list-runs", dag_id, "-o", "json"], env)
    return {r["run_id"]: r for r in json_rows(done.stdout)}


def wait_for(what: str, check, timeout_s: float, services: AirflowServices, every_s: float = 5.0):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f}s; logs in {services.logs}")
        time.sleep(every_s)


def newest_champion(s3) -> str:
    """`runs/<run>/models/<champion>` of the champion.json written last in the bucket."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="runs/")
    files = [o for p in pages for o in p.get("Contents", []) if o["Key"].endswith("/models/champion.json")]
    newest = max(files, key=lambda o: (o["LastModified"], o["Key"]))
    name = json.loads(get(s3, newest["Key"]))["champion"]
    return newest["Key"].rsplit("/", 1)[0] + f"/{name}"


def partitions_snapshot(s3, daily_runs: dict) -> dict:
    return {
        day: {
            "curated": snapshot(s3, f"curated/images/batch_id={day}/"),
            "features": {k: v for k, v in snapshot(s3, "features/").items() if f"batch_id={day}/" in k},
            "run": snapshot(s3, daily_runs[day] + "/"),
        }
        for day in (DAY1, DAY2)
    }


FINAL = ("success", "failed")


@pytest.fixture(scope="module")
def live(s3_server, orch_env, conf, daily_runs, tmp_path_factory):
    """A real scheduler + triggerer: a live deferred wait, a backfill, and champion-triggered scoring.

    1. A manual run for batch LATE defers on the triggerer (its batch is not there); LATE lands; it resumes.
    2. `airflow backfill create` DAY0..DAY1 (DAY0 has no batch, DAY1 is re-run).
    3. Every `train` success announces a champion; the scoring DAG (unpaused) scores SCORING_BATCH with it.
    """
    client = s3_server.client()
    root = tmp_path_factory.mktemp("live")
    late_batch = synth_batch(root, 23, 200_000, orch_env)
    scoring_batch = synth_batch(root, 24, 300_000, orch_env)
    land(scoring_batch, f"scoring/{SCORING_BATCH}", orch_env)
    before = partitions_snapshot(client, daily_runs)
    env = {**orch_env, "MOLESCOPE_BATCH_POKE_S": str(POKE_S)}
    services = AirflowServices(env, tmp_path_factory.mktemp("services"))
    result: dict = {"logs": services.logs}
    try:
        run(["airflow", "dags", "reserialize"], services.env)
        services.start(
            ["api-server", "--port", services.env["AIRFLOW__API__PORT"]],
            ["scheduler"],
            ["dag-processor"],
            ["triggerer"],
        )
        for dag_id in (DAG_ID, SCORING_DAG):
            run(["airflow", "dags", "unpause", dag_id], services.env)

        late_conf = {**conf, "batch_id": LATE, "batch_wait_hours": 1}
        trigger = [
            "airflow",
            "dags",
            "trigger",
            DAG_ID,
            "--run-id",
            LATE_RUN,
            "--conf",
            json.dumps(late_conf),
        ]
        run(trigger, services.env)

        def sensor_is(state: str):
            found = task_states(services.env, LATE_RUN).get("wait_for_batch")
            if found in ("skipped", "failed", "upstream_failed"):
                pytest.fail(f"wait_for_batch of {LATE_RUN} ended {found} while waiting for {state}")
            return found == state and state

        result["late_waiting"] = wait_for(
            "late run deferred", lambda: sensor_is("deferred"), DEFER_TIMEOUT_S, services
        )
        land(late_batch, f"landing/{LATE}", env)
        landed = time.monotonic()
        wait_for("late run resumed", lambda: sensor_is("success"), DEFER_TIMEOUT_S, services, every_s=2)
        result["resumed_after_s"] = time.monotonic() - landed
        print(f"\nlate batch landed → wait_for_batch success after {result['resumed_after_s']:.0f}s")

        started = time.monotonic()
        run(
            [
                "airflow",
                "backfill",
                "create",
                "--dag-id",
                DAG_ID,
                "--from-date",
                DAY0,
                "--to-date",
                DAY1,
                "--reprocess-behavior",
                "completed",
                "--dag-run-conf",
                json.dumps(conf),
            ],
            services.env,
        )

        def pipeline_done():
            # DAY0 gets a new backfill run; DAY1's existing run is cleared (queued again, same run id) by
            # `backfill create` itself, so a final state here is the re-run's.
            rows = runs_of(services.env, DAG_ID)
            by_day = {(r.get("logical_date") or "")[:10]: r for r in rows.values()}
            wanted = {DAY0: by_day.get(DAY0), DAY1: by_day.get(DAY1), LATE: rows.get(LATE_RUN)}
            return all(r and r["state"] in FINAL for r in wanted.values()) and wanted

        runs = wait_for("backfill and late run finished", pipeline_done, LIVE_TIMEOUT_S, services, every_s=10)
        print(f"\nbackfill {DAY0}..{DAY1} + late run: {time.monotonic() - started:.0f}s")
        result["runs"] = {key: (r["run_id"], r["state"]) for key, r in runs.items()}
        result["tasks"] = {key: task_states(services.env, r["run_id"]) for key, r in runs.items()}

        champion = newest_champion(client)  # runs/<run>/models/<model>
        _, run_folder, _, model = champion.split("/")
        expected = f"scores/{SCORING_BATCH}/{run_folder}/{model}/summary.json"

        def scoring_done():
            scored = bool(keys_of(client, expected))
            rows = runs_of(services.env, SCORING_DAG)
            return scored and all(r["state"] in FINAL for r in rows.values()) and rows

        result["scoring_runs"] = wait_for("champion scored", scoring_done, SCORING_TIMEOUT_S, services)
        result["champion"], result["scores"] = champion, expected
    finally:
        services.stop()
    result["before"], result["after"] = before, partitions_snapshot(client, daily_runs)
    return result


def test_backfill_skips_the_missing_day(live):
    _run_id, state = live["runs"][DAY0]
    assert state == "success", live["tasks"][DAY0]
    tasks = live["tasks"][DAY0]
    assert tasks["wait_for_batch"] == "skipped"
    assert {tasks[t] for t in ("clean", "featurize", "upsample", "train", "report")} == {"skipped"}


def test_backfill_reruns_a_date_idempotently(s3_server, live, daily_runs):
    assert live["runs"][DAY1][1] == "success", live["tasks"][DAY1]
    before, after = live["before"], live["after"]
    # DAY1's partitions were rewritten, DAY2's are exactly as they were.
    assert after[DAY1]["curated"] and after[DAY1]["curated"] != before[DAY1]["curated"]
    assert after[DAY1]["features"] and after[DAY1]["features"] != before[DAY1]["features"]
    assert after[DAY2]["curated"] == before[DAY2]["curated"]
    assert after[DAY2]["features"] == before[DAY2]["features"]
    # The re-run is the same Airflow run (same run id), so it rewrote its own run prefix and no other.
    assert after[DAY1]["run"] != before[DAY1]["run"]
    assert after[DAY2]["run"] == before[DAY2]["run"]
    client = s3_server.client()
    assert run_prefix_for(client, DAY1) == daily_runs[DAY1]
    assert json.loads(get(client, f"{daily_runs[DAY1]}/upsample_summary.json"))["batches"] == [DAY1]
    assert parquet_rows(client, f"curated/images/batch_id={DAY1}/") > 0


def test_deferred_wait_resumes_when_the_batch_lands(s3_server, live):
    assert live["late_waiting"] == "deferred"  # waiting on the triggerer, no worker slot held
    assert live["resumed_after_s"] < DEFER_TIMEOUT_S
    _run_id, state = live["runs"][LATE]
    assert state == "success", live["tasks"][LATE]
    assert set(live["tasks"][LATE].values()) == {"success"}
    assert parquet_rows(s3_server.client(), f"curated/images/batch_id={LATE}/") > 0


def test_new_champion_triggers_scoring_with_its_model(s3_server, live):
    runs = live["scoring_runs"]
    assert {r["state"] for r in runs.values()} == {"success"}, runs
    assert any(run_id.startswith("asset_triggered__") for run_id in runs), sorted(runs)
    summary = json.loads(get(s3_server.client(), live["scores"]))
    assert summary["model_uri"] == f"s3a://{BUCKET}/{live['champion']}"
    # The model came from the asset event, not from a champion.json lookup, with the run's weights file.
    assert summary["champion_file"] is None
    assert summary["weights"] == f"s3a://{BUCKET}/models/mobilenet_0.25.h5"
    assert summary["scored"] + summary["quarantined"] == summary["rows_in"] > 0
