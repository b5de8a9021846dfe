"""Model quality of every recipe on real HAM10000, through the stage CLIs, with times and memory.

Runs clean → featurize → upsample once, then for each recipe (a model, with or without metadata fusion)
`train` into its own run prefix and `report` on it, each stage a `spark-submit` of the pipeline's entry point
(`--master local[2]`, driver memory as in the DAG), on local paths under `--work`; then `score` on an
unlabelled batch of images to time scoring. Prints one table:

    recipe | test acc | test bal acc | test mel recall / spec at the operating point | test macro AUC |
    validation bal acc at the rule (where the champion is chosen) | train wall | fit | score img/s | peak RSS

Every choice (early stopping, hyper-parameters, decision rule, champion) is made on the validation part by
train; the report touches the test split once per recipe. `champion` marks the recipe with the best
validation balanced accuracy (what the pipeline's champion choice would pick among them).

`--explore KEY=VALUE[,KEY=VALUE]` adds fine-tuning variants (train settings without the `--finetune-`
prefix, e.g. `epochs=8` or `epochs=8,input_size=256`) that are trained and compared on validation only; their
test figures are reported only for a variant named with `--report-variant` once it has been chosen.

    python benchmarks/bench_quality.py                            # everything, ../shared data and weights
    python benchmarks/bench_quality.py --recipes lr,finetune      # a subset
    python benchmarks/bench_quality.py --explore epochs=8 --recipes none   # a variant, validation only
    python benchmarks/bench_quality.py --limit 1500 --recipes lr,finetune --train-args "--finetune-epochs 1"
                                                                  # a quick, reduced run (whole lesions)

`--limit N` runs on a sample of about N images of the batch: whole lesions, taken in the order of a seeded
hash of lesion_id (`molescope.intake.split.lesion_unit`, another seed than clean's split), so the sample keeps
the class mix and its lesions are split as in the full batch. The figures of such a run are not the full
batch's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from molescope.core.constants import SPLIT_TEST
from molescope.core.paths import LOG4J_CONFIG, SPARK_APPLICATION
from molescope.core.sparkconf import ENV_JARS_DIR, S3Endpoint, spark_conf
from molescope.intake.split import lesion_unit

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOLESCOPE_SHARED") or REPO.parent / "shared")
ENTRY = SPARK_APPLICATION
#: Spark's JVM logs at WARN, as in the DAG's tasks.
LOG4J = LOG4J_CONFIG
BATCH = "ham10000"
MODELS = ("lr", "rf", "gbt", "mlp", "finetune")
#: Driver memory of the DAG's featurize and train tasks.
DRIVER_MEMORY = "6g"
SAMPLE_EVERY_S = 0.5
GIB = 1024**3
SCORING_IMAGES = 1000
METADATA_CSV = "HAM10000_metadata.csv"
#: Seed of the `--limit` sample's lesion order (not clean's split seed: the sample is not one split side).
LIMIT_SEED = 7


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its children (driver, JVM, Python workers)."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def submit_conf() -> list[str]:
    """The S3A jars and committer on the submit command, as the DAG's operator passes them: the session
    sets the committer classes, which a driver JVM started without the jars cannot load."""
    jars_dir = os.environ.get(ENV_JARS_DIR)
    if not jars_dir:
        return []
    conf = spark_conf(S3Endpoint.from_env(), jars_dir)
    return [arg for key, value in sorted(conf.items()) for arg in ("--conf", f"{key}={value}")]


def run_stage(stage: str, args: list[str], log_dir: Path, name: str | None = None) -> dict[str, Any]:
    """spark-submit one stage; returns its wall seconds, peak RSS of the process tree, load and summary."""
    name = name or stage
    cmd = [
        "spark-submit",
        "--master",
        "local[2]",
        "--driver-memory",
        DRIVER_MEMORY,
        "--conf",
        "spark.sql.shuffle.partitions=8",
        "--conf",
        "spark.ui.showConsoleProgress=false",
        "--conf",
        f"spark.driver.extraJavaOptions=-Dlog4j.configurationFile=file:{LOG4J}",
        *submit_conf(),
        str(ENTRY),
        stage,
        *args,
    ]
    log_path = log_dir / f"{name}.log"
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak, loads = 0, []
        handle = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak = max(peak, tree_rss(handle))
            loads.append(os.getloadavg()[0])
            time.sleep(SAMPLE_EVERY_S)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{name} failed ({proc.returncode}); log {log_path}:\n{tail}")
    result = {
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak / GIB, 2),
        "load_start": round(load_before, 1),
        "load_mean": round(sum(loads) / len(loads), 1) if loads else round(load_before, 1),
    }
    print(f"{name}: {result}", flush=True)
    return result


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (else a copy) of `source`: a plain file to Spark's file sources, as in a landed batch
    (Hadoop's local file system resolves symbolic links with extra calls)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def limited_batch(data: Path, limit: int, work: Path) -> Path:
    """A batch folder of about `limit` images of `data` (whole lesions; see the module docstring): its
    metadata CSV rows and links to their images."""
    with (data / METADATA_CSV).open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames or [], list(reader)
    order = sorted({r["lesion_id"] for r in rows}, key=lambda lesion: lesion_unit(LIMIT_SEED, lesion))
    per_lesion: dict[str, int] = {}
    for r in rows:
        per_lesion[r["lesion_id"]] = per_lesion.get(r["lesion_id"], 0) + 1
    chosen, total = set(), 0
    for lesion in order:
        if total >= limit:
            break
        chosen.add(lesion)
        total += per_lesion[lesion]
    folder = work / f"data-limit-{limit}"
    if folder.exists():
        return folder
    kept = [r for r in rows if r["lesion_id"] in chosen]
    write_batch(folder, fields, kept, data)
    print(f"--limit {limit}: {len(kept)} metadata rows of {len(chosen)} lesions in {folder}", flush=True)
    return folder


def write_batch(folder: Path, fields: list[str], rows: list[dict[str, str]], data: Path) -> None:
    """A batch folder: `rows` as its metadata CSV and links to their images in `data/images`."""
    (folder / "images").mkdir(parents=True)
    with (folder / METADATA_CSV).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, lineterminator="\n")  # as HAM10000's CSV
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        source = data / "images" / f"{r['image_id']}.jpg"
        if source.exists():
            link_or_copy(source, folder / "images" / source.name)


def prepare(work: Path, data: Path, weights: Path, backbone: str, logs: Path) -> dict[str, Any]:
    """clean → featurize → upsample (oversample, the pipeline's default) of the batch; their timings."""
    curated, features, base = work / "curated", work / "features", work / "runs" / "_base"
    steps = {}
    steps["clean"] = run_stage(
        "clean", ["--batch-dir", str(data), "--batch-id", BATCH, "--curated", str(curated)], logs
    )
    steps["featurize"] = run_stage(
        "featurize",
        [
            *("--curated", str(curated), "--batch-id", BATCH, "--features", str(features)),
            *("--ref-out", str(base / "features.json"), "--backbone", backbone, "--weights", str(weights)),
        ],
        logs,
    )
    steps["upsample"] = run_stage(
        "upsample",
        [
            *("--features", str(base / "features.json"), "--curated", str(curated), "--out", str(base)),
            *("--weights", str(weights), "--strategy", "oversample", "--seed", "42"),
        ],
        logs,
    )
    return steps


def recipe_name(model: str, metadata: bool, variant: str = "") -> str:
    return model + ("+meta" if metadata else "") + (f"[{variant}]" if variant else "")


def variant_args(variant: str) -> list[str]:
    """`epochs=8,input_size=256` → ["--finetune-epochs", "8", "--finetune-input-size", "256"]."""
    args = []
    for pair in filter(None, variant.split(",")):
        key, _, value = pair.partition("=")
        args += ["--finetune-" + key.strip().replace("_", "-"), value.strip()]
    return args


def train_recipe(
    work: Path, model: str, metadata: bool, variant: str, extra: list[str], logs: Path
) -> dict[str, Any]:
    """train one recipe into runs/<recipe>/ (validation figures only: train never reads the test split)."""
    name = recipe_name(model, metadata, variant)
    run = work / "runs" / name.replace("+", "_").replace("[", "_").replace("]", "").replace("=", "-")
    base = work / "runs" / "_base"
    args = [
        *("--train-set", str(base / "train_set"), "--features", str(base / "features.json")),
        *("--out", str(run), "--models", model, "--curated", str(work / "curated")),
        "--metadata" if metadata else "--no-metadata",
        *variant_args(variant),
        *extra,
    ]
    timing = run_stage("train", args, logs, f"train-{run.name}")
    sidecar = json.loads((run / "models" / model / "molescope_model.json").read_text())
    return {"recipe": name, "run": str(run), "model": model, "train": timing, "sidecar": sidecar}


def report_recipe(result: dict[str, Any], logs: Path) -> None:
    """The test split, once: `report` on the recipe's run."""
    run = Path(result["run"])
    result["report"] = run_stage("report", ["--run", str(run)], logs, f"report-{run.name}")
    metrics = json.loads((run / "metrics.json").read_text())["models"][result["model"]]
    assert metrics["split"] == SPLIT_TEST
    result["test"] = metrics


def scoring_batch(work: Path, data: Path, n: int) -> Path:
    """A folder of `n` curated test-split images without a metadata CSV (unlabelled, no metadata)."""
    folder = work / "scoring" / "unlabelled"
    if folder.exists():
        return folder
    folder.mkdir(parents=True)
    with (data / "HAM10000_metadata.csv").open(newline="") as handle:
        ids = [row["image_id"] for row in csv.DictReader(handle)][-n:]
    for image_id in ids:
        source = data / "images" / f"{image_id}.jpg"
        if source.exists():
            link_or_copy(source, folder / source.name)
    return folder


def score_recipe(result: dict[str, Any], batch: Path, work: Path, logs: Path, weights: Path) -> None:
    run = Path(result["run"])
    out = work / "scores" / run.name
    args = [
        *("--batch-dir", str(batch), "--batch-id", "bench", "--out", str(out)),
        *("--model", str(run / "models" / result["model"]), "--weights", str(weights)),
    ]
    timing = run_stage("score", args, logs, f"score-{run.name}")
    summary = json.loads(next(out.rglob("summary.json")).read_text())
    timing["images"] = summary["scored"]
    timing["img_per_s"] = round(summary["scored"] / summary["elapsed_s"], 1)
    timing["metadata_note"] = summary.get("metadata", {}).get("note")
    # What the case-review page (worklist, thumbnails, Grad-CAM maps, similar cases, drift) adds to scoring
    # the batch: its share of the whole, and over the rest (plain scoring).
    timing["review_s"] = summary["review_s"]
    timing["saliency_s"] = summary.get("saliency_s")
    timing["review_share"] = round(summary["review_s"] / summary["elapsed_s"], 3)
    timing["review_over_plain"] = round(summary["review_s"] / (summary["elapsed_s"] - summary["review_s"]), 3)
    timing["review_cards"], timing["flagged"] = summary["review_cards"], summary["flagged"]
    timing["drift_verdict"] = summary["drift"]["verdict"]
    result["score"] = timing


def row(result: dict[str, Any], champion: str | None) -> list[str]:
    def f(value: Any) -> str:
        return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    test = result.get("test") or {}
    op = test.get("operating_point") or {}
    val = result["sidecar"]["validation"]
    score = result.get("score") or {}
    return [
        result["recipe"] + (" (champion)" if result["recipe"] == champion else ""),
        f(test.get("accuracy")),
        f(test.get("balanced_accuracy")),
        f(op.get("accuracy")),
        f(op.get("balanced_accuracy")),
        f(op.get("mel_recall")),
        f(op.get("mel_specificity")),
        f((test.get("auc") or {}).get("mean")),
        f(val.get("balanced_accuracy")),
        f(val.get("mel_specificity")),
        f"{result['train']['wall_s']:.0f} / {result['sidecar']['fit_seconds']:.0f}",
        f(score.get("img_per_s")),
        f"{max(result['train']['peak_rss_gib'], score.get('peak_rss_gib', 0)):.1f}",
    ]


HEADER = [
    "recipe",
    "test acc",
    "test bal acc",
    "test acc @op",
    "test bal acc @op",
    "test mel recall @op",
    "test mel spec @op",
    "test macro AUC",
    "val bal acc @op",
    "val mel spec @op",
    "train wall / fit s",
    "score img/s",
    "peak RSS GiB",
]


def table(results: list[dict[str, Any]]) -> str:
    reported = [r for r in results if "test" in r]
    # No champion among explored variants only (validation figures, nothing reported on test).
    best = max(reported, key=lambda r: r["sidecar"]["validation"]["balanced_accuracy"], default=None)
    champion = best["recipe"] if best else None
    rows = [HEADER, ["---"] * len(HEADER)] + [row(r, champion) for r in results]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "ham10000")
    parser.add_argument("--weights", type=Path, default=SHARED / "models" / "mobilenet_2_5_224_tf_no_top.h5")
    parser.add_argument("--backbone", default="mobilenet_0.25")
    parser.add_argument("--work", type=Path, help="default .state/bench-quality[-limit-N]")
    parser.add_argument("--recipes", default=",".join(MODELS), help="models, or 'none' for --explore only")
    parser.add_argument("--metadata", default="both", choices=("both", "on", "off"))
    parser.add_argument("--explore", action="append", default=[], help="finetune variant, validation only")
    parser.add_argument("--report-variant", action="append", default=[], help="an explored variant to report")
    parser.add_argument("--train-args", default="", help="extra train arguments for every recipe")
    parser.add_argument("--scoring-images", type=int, default=SCORING_IMAGES)
    parser.add_argument(
        "--reuse", action="store_true", help="keep clean/featurize/upsample outputs of --work"
    )
    parser.add_argument("--limit", type=int, help="about this many images (whole lesions), for a quick run")
    args = parser.parse_args()
    if not args.data.is_dir() or not args.weights.is_file():
        raise SystemExit(f"missing {args.data} or {args.weights} (set MOLESCOPE_SHARED)")
    if args.limit is not None and args.limit < 100:
        raise SystemExit(f"--limit {args.limit}: at least 100 images (the validation part needs melanomas)")
    unknown = set(filter(None, args.recipes.split(","))) - {*MODELS, "none"}
    if unknown:
        raise SystemExit(f"--recipes: unknown {sorted(unknown)}; choose from {', '.join(MODELS)} or none")
    return args


def prepare_work(args: argparse.Namespace) -> Path:
    """Sets `args.work` (with --limit also the sampled `args.data` and `args.scoring_images`); the logs."""
    suffix = "" if args.limit is None else f"-limit-{args.limit}"
    args.work = args.work or REPO / ".state" / f"bench-quality{suffix}"
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.limit is not None:
        args.data = limited_batch(args.data, args.limit, args.work)
        args.scoring_images = min(args.scoring_images, args.limit)
    return logs


def recipe_plan(args: argparse.Namespace) -> list[tuple[str, bool, str]]:
    """(model, metadata fusion, finetune variant) of every recipe to train."""
    metadata = {"both": (False, True), "on": (True,), "off": (False,)}[args.metadata]
    models = [] if args.recipes == "none" else args.recipes.split(",")
    plan = [(m, meta, "") for m in models for meta in metadata]
    plan += [("finetune", meta, v) for v in args.explore for meta in metadata]
    plan += [("finetune", meta, v) for v in args.report_variant for meta in metadata if v not in args.explore]
    return plan


def run_plan(args, plan, done: dict[str, Any], results_path: Path, logs: Path) -> dict[str, Any]:
    """Trains (reports, scores) each recipe not in `done` yet, saving `done` after each; the results."""
    batch = scoring_batch(args.work, args.data, args.scoring_images)
    results = done.setdefault("results", {})
    extra = args.train_args.split()
    for model, meta, variant in plan:
        name = recipe_name(model, meta, variant)
        result = results.get(name) or train_recipe(args.work, model, meta, variant, extra, logs)
        results[name] = result
        print(
            f"{name}: validation {json.dumps(result['sidecar']['validation'], default=str)[:400]}", flush=True
        )
        if variant and variant not in args.report_variant:
            results_path.write_text(json.dumps(done, indent=1, default=str))
            continue
        if "test" not in result:
            report_recipe(result, logs)
        if "score" not in result:
            score_recipe(result, batch, args.work, logs, args.weights)
        results_path.write_text(json.dumps(done, indent=1, default=str))
    return results


def main() -> int:
    args = parse_args()
    logs = prepare_work(args)
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB; load {load}",
        flush=True,
    )
    results_path = args.work / "results.json"
    done = json.loads(results_path.read_text()) if args.reuse and results_path.exists() else {}
    if not (args.reuse and (args.work / "runs" / "_base" / "train_set").exists()):
        done["prepare"] = prepare(args.work, args.data, args.weights, args.backbone, logs)
    results = run_plan(args, recipe_plan(args), done, results_path, logs)
    print(f"\nbench-quality: {args.data} ({args.backbone}, {args.weights.name}); load at start {load}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"prepare: {json.dumps(done.get('prepare'))}")
    print(table(list(results.values())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
