"""The one live scenario every end-to-end test reads: a real Airflow (api-server, scheduler, dag-processor,
triggerer) over a real S3 server, driving real spark-submit. It is run once per test session, in phases
that each wait for a condition (a run, a backfill, the scoring DAG going idle), never for a fixed time:

A. daily runs and a late batch - `manual__<DAY1>` (logical date DAY1) runs; when it succeeded,
   `manual__<DAY2>` runs (so its training sees both days). Meanwhile the manual run LATE_RUN for
   PIPELINE_BATCH (120 images with defects, LR + RF + GBT) defers on the triggerer until that batch lands,
   then resumes: test_pipeline reads what this run wrote, test_orchestration that it waited deferred.
B. backfill - with the scoring DAG idle, the batch SCORING_BATCH lands in scoring/; one backfill
   DAY0..DAY1 with `reprocess_behavior=completed` skips DAY0 (no batch) and re-runs DAY1's run; its
   `train` announces a new champion, on which the scoring DAG scores SCORING_BATCH.
C. manual scoring - the real, labelled HAM10000 batch LABELLED_BATCH is scored by a manual run of the
   scoring DAG with the newest champion.json (test_scoring).

Each Spark stage holds the one slot of the `spark` pool, so runs that overlap still run one Spark job at a
time. Every wait is limited by what Airflow itself allows the work (the sum of the DAG's execution
timeouts) within the session's LIVE_BUDGET_S, and reports what it last saw when it gives up.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.airflow_live import FINAL, Airflow, wait_for_run
from tests.conftest import IN_CI
from tests.helpers import Budget, S3Bucket, note, run_command, wait_until

PIPELINE_DAG = "skin_lesion_pipeline"
SCORING_DAG = "skin_lesion_scoring"
#: How long the whole live scenario may take. In CI (limit 90 min for set-up and every test; the scenario
#: takes ~15 min there) a hang fails with a report before the job is killed; elsewhere a loaded laptop gets
#: all the time Airflow itself allows (each wait is also limited by the DAG's execution timeouts).
LIVE_BUDGET_S = float(os.environ.get("MOLESCOPE_LIVE_BUDGET_S", 75 * 60 if IN_CI else 4 * 3600))
WEIGHTS_KEY = "models/mobilenet_0.25.h5"

DAY0, DAY1, DAY2 = "2026-11-19", "2026-11-20", "2026-11-21"
DAILY_IMAGES = 40
#: The late batch: it lands while its run waits deferred, and it is what test_pipeline checks.
PIPELINE_BATCH = "synthetic-001"
PIPELINE_IMAGES = 120
PIPELINE_MODELS = ["lr", "rf", "gbt"]
LATE_RUN = f"manual__{PIPELINE_BATCH}"
#: The late run's wait window: it must resume because the batch landed, long before this ends.
LATE_WAIT_HOURS = 1
#: How often the triggerer looks for a batch that has not landed yet (the DAG's default is 300 s).
POKE_S = 5
#: Synthetic batch every new champion scores (phase B), real labelled batch scored by hand (phase C).
SCORING_BATCH, LABELLED_BATCH = "clinic-1", "clinic-001"
LABELLED_RUN = f"manual__{LABELLED_BATCH}"
#: The ISIC 2018 Task 3 submission header.
ISIC_HEADER = ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
#: Bytes that start like a JPEG and then are not one.
CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 8
HAM10000_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")


def daily_run(day: str) -> str:
    return f"manual__{day}"


def synth_batch(
    root: Path, env: dict[str, str], seed: int, images: int, id_offset: int, size=(200, 150), defects=False
) -> Path:
    """A synthetic batch whose image ids start at ISIC_<id_offset> (synth reuses ids across seeds)."""
    out = root / f"batch-{seed}"
    cmd = ["molescope", "synth", "--out", str(out), "--images", str(images), "--seed", str(seed)]
    cmd += ["--width", str(size[0]), "--height", str(size[1])] + (["--with-defects"] if defects else [])
    run_command(cmd, env)
    if id_offset:
        renamed: dict[str, str] = {}
        for image in out.rglob("ISIC_*"):
            new_id = f"ISIC_{int(image.stem.split('_')[1]) + id_offset:07d}"
            renamed[image.stem] = new_id
            image.rename(image.with_name(new_id + image.suffix))
        metadata = next(out.rglob("*.csv"))
        text = metadata.read_text()
        for old, new in renamed.items():
            text = text.replace(old, new)
        metadata.write_text(text)
    return out


def labelled_batch(ham10000: Path, out: Path) -> list[dict[str, str]]:
    """The first real HAM10000 image of each class (by image id), its metadata, and one corrupt JPEG."""
    with (ham10000 / "HAM10000_metadata.csv").open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["image_id"])
    chosen: dict[str, dict[str, str]] = {}
    for row in rows:
        if row["dx"] not in chosen and (ham10000 / "images" / f"{row['image_id']}.jpg").exists():
            chosen[row["dx"]] = row
    out.mkdir(parents=True)
    for row in chosen.values():
        shutil.copy(ham10000 / "images" / f"{row['image_id']}.jpg", out)
    (out / "unreadable.jpg").write_bytes(CORRUPT_JPEG)
    with (out / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HAM10000_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(chosen.values())
    return list(chosen.values())


def metadata_rows(batch: Path) -> int:
    """Rows of the batch's metadata CSV (what was landed)."""
    with next(batch.rglob("*.csv")).open(newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def land(batch: Path, s3: S3Bucket, prefix: str, env: dict[str, str]) -> None:
    """`molescope land`: images first, the metadata CSV last (the batch's arrival signal)."""
    run_command(["molescope", "land", "--source", str(batch), "--dest", f"s3a://{s3.bucket}/{prefix}"], env)


def run_prefix_for(s3: S3Bucket, logical_day: str) -> str:
    """The runs/<run>/ prefix whose params.json has the given logical date."""
    found = []
    for key in s3.keys("runs/"):
        if key.endswith("/params.json") and (s3.json(key).get("logical_date") or "").startswith(logical_day):
            found.append(key.rsplit("/", 1)[0])
    assert len(found) == 1, f"expected one run for {logical_day}, found {found}"
    return found[0]


def run_prefix_of(s3: S3Bucket, run_id: str) -> str:
    """The runs/<run>/ prefix whose params.json records `run_id`."""
    found = [
        k.rsplit("/", 1)[0]
        for k in s3.keys("runs/")
        if k.endswith("/params.json") and s3.json(k)["run_id"] == run_id
    ]
    assert len(found) == 1, f"expected one run prefix for {run_id}, found {found}"
    return found[0]


def newest_champion(s3: S3Bucket) -> str:
    """`runs/<run>/models/<champion>` of the champion.json written last (what the score stage looks up)."""
    files = [o for o in s3.objects("runs/") if o["Key"].endswith("/models/champion.json")]
    newest = max(files, key=lambda o: (o["LastModified"], o["Key"]))
    return newest["Key"].rsplit("/", 1)[0] + "/" + s3.json(newest["Key"])["champion"]


def partitions_snapshot(s3: S3Bucket, run_prefixes: dict[str, str]) -> dict:
    """Per day: its curated partition, its feature partitions and its run prefix (key -> LastModified)."""
    features = s3.snapshot("features/")
    return {
        day: {
            "curated": s3.snapshot(f"curated/images/batch_id={day}/"),
            "features": {k: v for k, v in features.items() if f"batch_id={day}/" in k},
            "run": s3.snapshot(run_prefixes[day] + "/"),
        }
        for day in (DAY1, DAY2)
    }


def require_success(airflow: Airflow, dag_id: str, run: dict) -> None:
    """A run the next phase builds on must have succeeded: fail with its task states and the failed logs."""
    if run["state"] == "success":
        return
    states = airflow.api.task_states(dag_id, run["dag_run_id"])
    failed = [task for task, state in states.items() if state == "failed"]
    logs = "\n".join(airflow.api.task_log(dag_id, run["dag_run_id"], t)[-3000:] for t in failed[:1])
    pytest.fail(f"{dag_id} {run['dag_run_id']} ended {run['state']}: {states}\n{logs}")


class Scenario:
    """The phases, in order; each returns what the tests read."""

    def __init__(self, airflow: Airflow, s3: S3Bucket, batches: dict[str, Path], conf: dict):
        self.airflow, self.api, self.s3 = airflow, airflow.api, s3
        self.batches, self.conf = batches, conf
        self.env = airflow.env
        self.budget = Budget(LIVE_BUDGET_S)

    def _sensor_state(self, want: str):
        found = self.api.task_states(PIPELINE_DAG, LATE_RUN).get("wait_for_batch")
        if found in ("skipped", "failed", "upstream_failed"):
            pytest.fail(f"wait_for_batch of {LATE_RUN} ended {found} while waiting for {want}")
        return found

    def _wait_sensor(self, want: str, every_s: float) -> str:
        return wait_until(
            f"wait_for_batch of {LATE_RUN} {want}",
            lambda: self._sensor_state(want),
            self.budget.limit(LATE_WAIT_HOURS * 3600),
            done=lambda state: state == want,
            every_s=every_s,
            report=self.airflow.report,
        )

    def _final(self, dag_id: str, run_id: str) -> dict:
        return wait_for_run(self.airflow, dag_id, run_id, self.budget)

    def daily_and_late(self) -> dict:
        """Phase A."""
        note(f"live scenario, phase A: {daily_run(DAY1)}, then {daily_run(DAY2)}; {LATE_RUN} deferred")
        late_conf = {
            **self.conf,
            "batch_id": PIPELINE_BATCH,
            "batch_wait_hours": LATE_WAIT_HOURS,
            "models": PIPELINE_MODELS,
            "training_batches": "this_batch",
        }
        self.api.trigger(PIPELINE_DAG, LATE_RUN, late_conf)
        self.api.trigger(PIPELINE_DAG, daily_run(DAY1), self.conf, logical_date=f"{DAY1}T00:00:00Z")
        result: dict = {"late_waiting": self._wait_sensor("deferred", every_s=5)}
        land(self.batches["pipeline"], self.s3, f"landing/{PIPELINE_BATCH}", self.env)
        landed = time.monotonic()
        self._wait_sensor("success", every_s=2)
        result["resumed_after_s"] = time.monotonic() - landed
        note(f"late batch landed: wait_for_batch success after {result['resumed_after_s']:.0f}s")

        require_success(self.airflow, PIPELINE_DAG, self._final(PIPELINE_DAG, daily_run(DAY1)))
        self.api.trigger(PIPELINE_DAG, daily_run(DAY2), self.conf, logical_date=f"{DAY2}T00:00:00Z")
        require_success(self.airflow, PIPELINE_DAG, self._final(PIPELINE_DAG, daily_run(DAY2)))
        late = self._final(PIPELINE_DAG, LATE_RUN)
        result["late"] = (late["state"], self.api.task_states(PIPELINE_DAG, LATE_RUN))
        result["late_report_log"] = self.api.task_log(PIPELINE_DAG, LATE_RUN, "report")
        result["prefixes"] = {day: run_prefix_for(self.s3, day) for day in (DAY1, DAY2)}
        result["training_log"] = {
            day: self.api.task_log(PIPELINE_DAG, daily_run(day), "training_batches") for day in (DAY1, DAY2)
        }
        return result

    def _scoring_idle(self) -> dict:
        """Wait until no scoring run is pending or running and no champion event waits for one."""

        def probe():
            runs = {r: run["state"] for r, run in self.api.runs(SCORING_DAG).items()}
            return {"runs": runs, "queued_events": len(self.api.queued_asset_events(SCORING_DAG))}

        return wait_until(
            "scoring DAG idle",
            probe,
            self.budget.limit(self.api.execution_timeout_s(SCORING_DAG)),
            done=lambda seen: not seen["queued_events"] and all(s in FINAL for s in seen["runs"].values()),
            every_s=10,
            report=self.airflow.report,
        )["runs"]

    def backfill(self, prefixes: dict[str, str]) -> dict:
        """Phase B."""
        note(f"live scenario, phase B: backfill {DAY0}..{DAY1}, then scoring on its champion")
        self._scoring_idle()  # earlier champions found nothing to score: no Spark job for them
        land(self.batches["scoring"], self.s3, f"scoring/{SCORING_BATCH}", self.env)
        result: dict = {"before": partitions_snapshot(self.s3, prefixes)}
        wait_until(
            f"no backfill of {PIPELINE_DAG} running",
            lambda: self.api.active_backfills(PIPELINE_DAG),
            self.budget.limit(self.api.execution_timeout_s(PIPELINE_DAG)),
            done=lambda active: not active,
        )
        started = time.monotonic()
        # to_date midday of DAY1: measured on Airflow 3, to_date DAY1T00:00 left DAY1's run out and
        # to_date DAY2T00:00 re-ran DAY2's run too; the midday bound takes exactly DAY0 and DAY1.
        backfill = self.api.create_backfill(
            PIPELINE_DAG,
            DAY0,
            f"{DAY1}T12:00:00Z",
            dag_run_conf=self.conf,
            reprocess_behavior="completed",
            max_active_runs=1,
        )

        def by_day() -> dict[str, dict]:
            rows = self.api.runs(PIPELINE_DAG).values()
            return {day: r for r in rows if (day := (r.get("logical_date") or "")[:10]) in (DAY0, DAY1)}

        wait_until(
            f"backfill {backfill['id']} {DAY0}..{DAY1} complete",
            lambda: {"backfill": self.api.get(f"/backfills/{backfill['id']}"), "runs": by_day()},
            self.budget.limit(2 * self.api.execution_timeout_s(PIPELINE_DAG)),
            done=lambda seen: (
                bool(seen["backfill"]["completed_at"])
                and all(seen["runs"].get(d, {}).get("state") in FINAL for d in (DAY0, DAY1))
            ),
            every_s=10,
            report=self.airflow.report,
        )
        note(f"backfill {DAY0}..{DAY1} complete after {time.monotonic() - started:.0f}s")
        runs = by_day()
        result["runs"] = {day: (r["dag_run_id"], r["state"]) for day, r in runs.items()}
        result["tasks"] = {
            day: self.api.task_states(PIPELINE_DAG, r["dag_run_id"]) for day, r in runs.items()
        }

        champion = newest_champion(self.s3)  # runs/<run>/models/<model>: the re-run's
        _, run_folder, _, model = champion.split("/")
        expected = f"scores/{SCORING_BATCH}/{run_folder}/{model}/summary.json"
        wait_until(
            f"{expected} written",
            lambda: self.s3.keys(expected),
            self.budget.limit(self.api.execution_timeout_s(SCORING_DAG)),
            every_s=10,
            report=lambda: f"scoring runs: {self.api.runs(SCORING_DAG)}\n{self.airflow.report()}",
        )
        result["scoring_runs"] = self._scoring_idle()
        result["champion"], result["scores"] = champion, expected
        result["after"] = partitions_snapshot(self.s3, prefixes)
        return result

    def labelled_scoring(self, batch: Path, weights_uri: str) -> dict:
        """Phase C."""
        note(f"live scenario, phase C: {LABELLED_BATCH} scored by {LABELLED_RUN}")
        land(batch, self.s3, f"scoring/{LABELLED_BATCH}", self.env)
        champion = newest_champion(self.s3)
        _, run_folder, _, model = champion.split("/")
        conf = {"batch_id": LABELLED_BATCH, "weights": weights_uri}
        self.api.trigger(SCORING_DAG, LABELLED_RUN, conf)
        require_success(self.airflow, SCORING_DAG, self._final(SCORING_DAG, LABELLED_RUN))
        return {
            "prefix": f"scores/{LABELLED_BATCH}/{run_folder}/{model}",
            "run_folder": run_folder,
            "model": model,
        }
