"""The daily run, incremental: a new labelled batch lands after the full batch was trained once.

Through the stage CLIs (each a `spark-submit` as in `bench_quality`, `--master local[2]`) on local paths
under `--work` (default `.state/bench-daily`):

1. the real HAM10000 batch is cut in two by whole lesions (seeded order): `day0` (all but ~`--new-images`)
   and `day1` (~`--new-images`), so no lesion is on both sides and the validation lesions are the same;
2. day 0: clean → featurize → upsample → train the fine-tune from the backbone's weights (a full fit);
3. day 1, the daily run: clean and featurize the new batch only, upsample all batches, then train the
   pipeline's models (`registry.PIPELINE_MODELS`) with `--warm-start <work>/runs` (the fine-tune starts
   from day 0's model for `--finetune-warm-epochs` epochs, as the rule decides and records);
4. `--warm-epochs 1,2`: the same warm start with other epoch counts, fine-tune only, compared on validation;
5. unless `--skip-full`: the full retrain on both batches (what the daily run replaces), on validation.

Prints the day-1 stage times (the daily run's cost without Airflow's own) and, per fit, its epochs, fit
seconds and validation balanced accuracy at the decision rule. The test split is not read.

    python benchmarks/bench_daily.py                       # everything (~1 h 15 min on 2 cores)
    python benchmarks/bench_daily.py --skip-full --reuse   # keep day 0's model, skip the full retrain
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench_quality import DRIVER_MEMORY, METADATA_CSV, REPO, SHARED, run_stage, write_batch

from molescope.core.registry import PIPELINE_MODELS
from molescope.intake.split import lesion_unit

#: Seed of the lesion order that cuts the batch in two (not clean's split seed).
CUT_SEED = 11
SEED = "42"


def cut(data: Path, new_images: int, work: Path) -> tuple[Path, Path]:
    """`work/day0` and `work/day1`: the metadata rows and image links of each side (whole lesions)."""
    with (data / METADATA_CSV).open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], list(reader)
    lesions = sorted({r["lesion_id"] for r in rows}, key=lambda lesion: lesion_unit(CUT_SEED, lesion))
    per_lesion: dict[str, int] = {}
    for r in rows:
        per_lesion[r["lesion_id"]] = per_lesion.get(r["lesion_id"], 0) + 1
    new, total = set(), 0
    for lesion in reversed(lesions):
        if total >= new_images:
            break
        new.add(lesion)
        total += per_lesion[lesion]
    folders = work / "day0", work / "day1"
    for folder, keep in zip(folders, (False, True), strict=True):
        shutil.rmtree(folder, ignore_errors=True)
        kept = [r for r in rows if (r["lesion_id"] in new) == keep]
        write_batch(folder, fields, kept, data)
        print(f"{folder.name}: {len(kept)} metadata rows", flush=True)
    return folders


def land(work: Path, batch: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """clean and featurize one batch, then upsample every batch into the run `runs/<batch name>`."""
    curated, features, run = work / "curated", work / "features", work / "runs" / batch.name
    ref, weights = str(run / "features.json"), str(args.weights)
    return {
        "clean": run_stage(
            "clean",
            ["--batch-dir", str(batch), "--batch-id", batch.name, "--curated", str(curated)],
            logs,
            f"clean-{batch.name}",
        ),
        "featurize": run_stage(
            "featurize",
            [
                *("--curated", str(curated), "--batch-id", batch.name, "--features", str(features)),
                *("--ref-out", ref, "--backbone", args.backbone, "--weights", weights),
            ],
            logs,
            f"featurize-{batch.name}",
        ),
        "upsample": run_stage(
            "upsample",
            [
                *("--features", ref, "--curated", str(curated), "--out", str(run)),
                *("--weights", weights, "--strategy", "oversample", "--seed", SEED),
            ],
            logs,
            f"upsample-{batch.name}",
        ),
    }


def train(work: Path, data_run: str, out: str, args: argparse.Namespace, logs: Path, *extra: str) -> dict:
    """train into `runs/<out>` on the train set of `runs/<data_run>`; its timing, the fine-tune's figures."""
    base, run = work / "runs" / data_run, work / "runs" / out
    timing = run_stage(
        "train",
        [
            *("--train-set", str(base / "train_set"), "--features", str(base / "features.json")),
            *("--out", str(run), "--curated", str(work / "curated"), "--weights", str(args.weights)),
            *("--seed", SEED),
            *extra,
        ],
        logs,
        f"train-{out}",
    )
    sidecar = json.loads((run / "models" / "finetune" / "molescope_model.json").read_text())
    history = sidecar.get("keras_history") or {}
    return {
        "train": timing,
        "fit_s": round(sidecar["fit_seconds"], 1),
        "epochs": history.get("epochs_run"),
        "train_images": history.get("train_images"),
        "val_bal_acc_at_rule": sidecar["validation"].get("balanced_accuracy"),
        "val_mel_recall_at_rule": sidecar["validation"].get("mel_recall"),
        "warm_start": sidecar["params"].get("warm_start"),
    }


def forget_day1(work: Path) -> None:
    """Day 1 starts from day 0 alone, as on the day: no other run, no trace of the new batch."""
    for run in [p for p in (work / "runs").iterdir() if p.name != "day0"]:
        shutil.rmtree(run)
    for trace in [*(work / "curated").rglob("*day1*"), *(work / "features").rglob("*day1*")]:
        if trace.is_dir():
            shutil.rmtree(trace, ignore_errors=True)
        elif trace.exists():
            trace.unlink()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "ham10000")
    parser.add_argument("--weights", type=Path, default=SHARED / "models" / "mobilenet_2_5_224_tf_no_top.h5")
    parser.add_argument("--backbone", default="mobilenet_0.25")
    parser.add_argument("--work", type=Path, default=REPO / ".state" / "bench-daily")
    parser.add_argument("--new-images", type=int, default=500)
    parser.add_argument("--warm-epochs", default="1", help="other warm epoch counts to compare, or ''")
    parser.add_argument("--skip-full", action="store_true", help="no full retrain on both batches")
    parser.add_argument("--reuse", action="store_true", help="keep day 0 (its model) from an earlier run")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logs = args.work / "logs"
    print(
        f"machine: {os.cpu_count()} cores; load {os.getloadavg()}; driver memory {DRIVER_MEMORY}", flush=True
    )
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if args.reuse and results_path.exists() else {}
    finetune_only = ("--models", "finetune", "--warm-start", "none")
    if "day0" not in results:
        shutil.rmtree(args.work, ignore_errors=True)
        logs.mkdir(parents=True)
        day0, _ = cut(args.data, args.new_images, args.work)
        results["day0"] = {"land": land(args.work, day0, args, logs)}
        results["day0"]["fit"] = train(args.work, "day0", "day0", args, logs, *finetune_only)
        results_path.write_text(json.dumps(results, indent=1))
    forget_day1(args.work)
    started = time.monotonic()
    results["day1"] = {"land": land(args.work, args.work / "day1", args, logs)}
    daily = ("--models", ",".join(PIPELINE_MODELS), "--warm-start", str(args.work / "runs"))
    results["day1"]["fit"] = train(args.work, "day1", "day1", args, logs, *daily)
    results["day1"]["wall_s"] = round(time.monotonic() - started, 1)
    previous = str(args.work / "runs" / "day0" / "models" / "finetune")
    for epochs in filter(None, args.warm_epochs.split(",")):
        extra = ("--models", "finetune", "--warm-start", previous, "--finetune-warm-epochs", epochs)
        results[f"warm-{epochs}"] = {"fit": train(args.work, "day1", f"warm-{epochs}", args, logs, *extra)}
    if not args.skip_full:
        results["full"] = {"fit": train(args.work, "day1", "full", args, logs, *finetune_only)}
    results_path.write_text(json.dumps(results, indent=1))
    print(f"\nbench-daily: {' '.join(sys.argv)}\nday 1 (the daily run): {json.dumps(results['day1'])}")
    for name, result in results.items():
        fit = result["fit"]
        print(
            f"{name:8} epochs {fit['epochs']} on {fit['train_images']} images: fit {fit['fit_s']} s, "
            f"train wall {fit['train']['wall_s']} s, val bal acc @rule {fit['val_bal_acc_at_rule']}, "
            f"val mel recall @rule {fit['val_mel_recall_at_rule']}, warm start {fit['warm_start']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
