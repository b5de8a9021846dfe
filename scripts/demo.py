"""`make demo`: land a batch, trigger `skin_lesion_pipeline` through the running Airflow, wait, print results.

Expects the services started by `scripts/services.sh` and the environment of `scripts/env.sh`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DAG_ID = "skin_lesion_pipeline"
#: Runs on each new champion (asset event); with nothing under scoring/ it skips without a Spark job.
SCORING_DAG_ID = "skin_lesion_scoring"
POLL_S = 10
#: `--backbone auto`: the backbone that fits this machine (`choose_backbone`).
AUTO = "auto"
TERMINAL = {"success", "failed"}


def sh(*cmd: str, capture: bool = True) -> str:
    done = subprocess.run(cmd, check=True, text=True, capture_output=capture)
    return done.stdout if capture else ""


def airflow_json(*args: str):
    """Run an `airflow ... -o json` command; warnings may precede the JSON line, so pick that line."""
    out = sh("airflow", *args, "-o", "json")
    for line in reversed(out.splitlines()):
        if line.startswith("[{") or line.strip() == "[]":
            return json.loads(line)
    return []


def visible_gpus() -> int:
    """GPUs TensorFlow sees on this machine (where `make demo`'s Spark tasks run)."""
    probe = "import tensorflow as tf; print(len(tf.config.list_physical_devices('GPU')))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


def choose_backbone(backbone: str) -> str:
    """`--backbone`, or for `auto` the one that fits this machine's fine-tune, saying which and why."""
    if backbone != AUTO:
        return backbone
    from molescope.core.registry import DEFAULT_BACKBONE, PIPELINE_BACKBONE

    gpus = visible_gpus()
    if gpus:
        chosen, why = DEFAULT_BACKBONE, f"{gpus} GPU(s) visible to TensorFlow"
    else:
        chosen = PIPELINE_BACKBONE
        why = (
            f"no GPU visible to TensorFlow, {os.cpu_count()} CPU cores: a {DEFAULT_BACKBONE} fine-tune "
            "runs at ~3 img/s here (hours on HAM10000)"
        )
    print(f"backbone: {chosen} ({why}; BACKBONE=<name> chooses another)", flush=True)
    return chosen


def imagenet_weights_available(backbone: str) -> bool:
    """True when Keras can obtain the ImageNet weights (cached, or downloadable from here)."""
    probe = (
        "from molescope.features.backbones import build_model, resolve_backbone; "
        f"build_model(resolve_backbone({backbone!r}, 'imagenet'))"
    )
    try:
        subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, timeout=300)
        return True
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False


def trigger(batch_id: str, conf: dict) -> str:
    run_id = f"demo__{batch_id}__{int(time.time())}"
    sh("airflow", "dags", "unpause", DAG_ID)
    sh("airflow", "dags", "unpause", SCORING_DAG_ID)
    sh("airflow", "dags", "trigger", DAG_ID, "--run-id", run_id, "--conf", json.dumps(conf))
    return run_id


def wait(run_id: str, timeout_s: int) -> str:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout_s:
        tasks = airflow_json("tasks", "states-for-dag-run", DAG_ID, run_id)
        line = " ".join(f"{t['task_id']}={t.get('state') or 'none'}" for t in tasks)
        if line != last:
            print(f"[{time.monotonic() - started:5.0f}s] {line}", flush=True)
            last = line
        runs = [r for r in airflow_json("dags", "list-runs", DAG_ID) if r.get("run_id") == run_id]
        if runs and runs[0].get("state") in TERMINAL:
            return runs[0]["state"]
        time.sleep(POLL_S)
    return "timeout"


def s3_get(key: str) -> bytes:
    from molescope.io import s3

    return s3.client().get_object(Bucket=os.environ["MOLESCOPE_BUCKET"], Key=key)["Body"].read()


def print_results(run_slug: str, state_dir: Path) -> None:
    prefix = f"runs/{run_slug}"
    metrics = json.loads(s3_get(f"{prefix}/metrics.json"))
    models = metrics.get("models", metrics)
    print(f"\n{'model':<8} {'accuracy':>9} {'balanced acc':>13} {'mel recall':>11}")
    for name, m in models.items():
        if isinstance(m, dict) and "accuracy" in m:
            print(
                f"{name:<8} {m['accuracy']:>9.3f} {m['balanced_accuracy']:>13.3f} "
                f"{m['melanoma_recall']:>11.3f}"
            )
    if metrics.get("champion"):
        print(f"champion: {metrics['champion']}")
    local = state_dir / "reports" / run_slug / "report.html"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(s3_get(f"{prefix}/report.html"))
    bucket = os.environ["MOLESCOPE_BUCKET"]
    print(f"\nreport: s3a://{bucket}/{prefix}/report.html (local copy: {local})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="", help="your HAM10000 folder; default: a synthetic sample")
    parser.add_argument("--batch-id", default="")
    parser.add_argument("--images", type=int, default=300, help="synthetic sample size")
    parser.add_argument(
        "--backbone", default=AUTO, help="a backbone, or auto: resnet50 on a GPU, else MobileNet-0.25"
    )
    parser.add_argument("--weights", default="", help="imagenet | random | path | s3a:// URI")
    parser.add_argument("--timeout", type=int, default=3600)
    return parser.parse_args()


def land_batch(args: argparse.Namespace, state: Path, warehouse: str) -> str:
    """Lands `--data` (default: a synthetic sample, made now) under `<warehouse>/landing/`; its batch id."""
    if args.data:
        source, batch_id = Path(args.data).expanduser().resolve(), args.batch_id or "ham10000"
    else:
        source, batch_id = state / "sample", args.batch_id or "sample"
        sh(
            "molescope",
            "synth",
            "--out",
            str(source),
            "--images",
            str(args.images),
            "--seed",
            "7",
            capture=False,
        )
    print(f"landing {source} as batch {batch_id!r} ...", flush=True)
    sh(
        "molescope",
        "land",
        "--source",
        str(source),
        "--dest",
        f"{warehouse}/landing/{batch_id}",
        capture=False,
    )
    return batch_id


def choose_weights(weights: str, backbone: str) -> str:
    """`--weights`, else ImageNet's where Keras can obtain them, else random ones (with a warning)."""
    if weights:
        return weights
    print(f"checking that Keras can obtain ImageNet weights for {backbone} ...", flush=True)
    if imagenet_weights_available(backbone):
        return "imagenet"
    print(
        f"\n*** ImageNet weights for {backbone} cannot be obtained on this machine (offline?).\n"
        "*** Running with RANDOM backbone weights: the pipeline is exercised end to end, but the\n"
        "*** accuracy figures are not meaningful. The report says so.\n"
        "*** Pass WEIGHTS=/path/to/weights.h5\n"
        "*** (or an s3a:// URI) to use your own copy.\n",
        flush=True,
    )
    return "random"


def main() -> int:
    args = parse_args()
    state = Path(os.environ["MOLESCOPE_STATE"])
    warehouse = os.environ["MOLESCOPE_WAREHOUSE"]

    batch_id = land_batch(args, state, warehouse)
    backbone = choose_backbone(args.backbone)
    weights = choose_weights(args.weights, backbone)
    conf = {"batch_id": batch_id, "backbone": backbone, "weights": weights}
    run_id = trigger(batch_id, conf)
    print(f"triggered {DAG_ID} run {run_id} with {json.dumps(conf)}", flush=True)
    state_name = wait(run_id, args.timeout)
    print(f"run {run_id}: {state_name}")
    if state_name != "success":
        print(
            f"task logs: {os.environ['AIRFLOW_HOME']}/logs/dag_id={DAG_ID}/run_id={run_id}/", file=sys.stderr
        )
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    from molescope_airflow.naming import slug

    print_results(slug(run_id), state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
