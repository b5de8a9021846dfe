"""The champion hand-off between the pipeline and the scoring DAG.

The pipeline's `train` task writes `<run>/models/champion.json` and, on success, emits the
`molescope_champion` asset event with an *extra* naming the exact model (`model_uri`) and the weights source
its features came from (`weights`). A scoring run triggered by that event scores with that model — not with
"the latest champion" looked up later, which may already be another run's — and with those weights (a model
trained on a weights file needs the file again; `auto` only works for `imagenet` and `random`).

Light (the scoring DAG imports it at parse time): pure functions, plus `read_champion`, which
imports the S3 hook only when called (at task run time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from molescope.core.champion import champion_name, score_summary_key
from molescope.core.registry import CHAMPION_FILE, MODEL_CHAMPION, WEIGHTS_AUTO, is_batch_id


def champion_extra(models_uri: str, payload: Any, weights: str, batch_id: str) -> dict[str, str]:
    """The asset-event extra for the champion in `<models_uri>/champion.json`; ValueError if it names none."""
    name = champion_name(payload)
    if name is None:
        raise ValueError(f"{models_uri.rstrip('/')}/{CHAMPION_FILE} names no champion model: {payload!r}")
    models = models_uri.rstrip("/")
    return {
        "model_uri": f"{models}/{name}",
        "champion": name,
        "champion_file": f"{models}/{CHAMPION_FILE}",
        "weights": weights,
        "batch_id": batch_id,
        # How it was chosen: the metric and its value on the validation split (never the test split).
        "selected_by": str(payload.get("metric")),
        "selected_on": str(payload.get("split")),
        "selection_value": str(payload.get("value")),
    }


def read_champion(models_uri: str, s3_conn_id: str) -> Any:
    """The parsed `<models_uri>/champion.json` (an `s3a://` / `s3://` URI) read through the S3 connection."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    parsed = urlparse(models_uri)
    key = f"{parsed.path.strip('/')}/{CHAMPION_FILE}"
    return json.loads(S3Hook(aws_conn_id=s3_conn_id).read_key(key=key, bucket_name=parsed.netloc))


@dataclass(frozen=True)
class ChampionEvent:
    """What the scoring DAG needs of one triggering asset event."""

    timestamp: datetime
    extra: dict[str, Any]


@dataclass(frozen=True)
class ScoringChoice:
    """The model and weights a scoring run uses, and why (logged and pushed to XCom)."""

    model: str
    weights: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def scoring_choice(model_param: str, weights_param: str, events: Iterable[ChampionEvent]) -> ScoringChoice:
    """Explicit params win; else the newest triggering champion event's model; else the latest champion.

    - `model` param other than `champion`: that model folder (a user's explicit choice).
    - run triggered by champion events: the newest event that carries a `model_uri` (several events may be
      queued behind one run; the newest is the current champion). Its `weights` replace `auto`.
    - otherwise (a manual run, or events from an older producer without extras): `champion`, which the
      job resolves to the newest `runs/*/models/champion.json`.
    """
    if model_param and model_param != MODEL_CHAMPION:
        return ScoringChoice(model_param, weights_param, "model given by the run's params")
    announced = [e for e in events if isinstance(e.extra, dict) and e.extra.get("model_uri")]
    if announced:
        newest = max(announced, key=lambda e: e.timestamp)
        weights = weights_param
        if weights_param == WEIGHTS_AUTO and newest.extra.get("weights"):
            weights = str(newest.extra["weights"])
        reason = f"champion announced by {len(announced)} triggering event(s); newest at {newest.timestamp}"
        return ScoringChoice(str(newest.extra["model_uri"]), weights, reason)
    return ScoringChoice(MODEL_CHAMPION, weights_param, "no champion event: the newest champion.json")


def pending_batches(folders: Iterable[str], model_uri: str, summaries: Iterable[str]) -> list[str]:
    """Batch folders (valid batch ids) without `<batch>/<run>/<model>/summary.json` among `summaries`.

    `summaries` are keys relative to the scores root. The Spark job applies the same rule (and reports the
    folders it ignores); this is the cheap pre-check that spares a Spark job when nothing is to do.
    """
    done = set(summaries)
    valid = (f for f in folders if is_batch_id(f))
    return sorted(f for f in valid if score_summary_key(f, model_uri) not in done)


def _bucket_prefix(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, f"{parsed.path.strip('/')}/"


def list_batch_folders(root_uri: str, s3_conn_id: str) -> list[str]:
    """Names of the folders directly under `root_uri` (one delimiter listing)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    bucket, prefix = _bucket_prefix(root_uri)
    found = S3Hook(aws_conn_id=s3_conn_id).list_prefixes(bucket_name=bucket, prefix=prefix, delimiter="/")
    return sorted(p[len(prefix) :].strip("/") for p in found or [])


def score_summaries(scores_uri: str, batches: Iterable[str], model_uri: str, s3_conn_id: str) -> list[str]:
    """Which of the batches' `summary.json` for `model_uri` exist (keys relative to `scores_uri`)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=s3_conn_id)
    bucket, prefix = _bucket_prefix(scores_uri)
    keys = (score_summary_key(batch, model_uri) for batch in batches)
    return [key for key in keys if hook.check_for_key(prefix + key, bucket_name=bucket)]


def nothing_to_score(model: str, scoring_root: str, scores_root: str, s3_conn_id: str) -> str | None:
    """Why a run scoring every pending batch has nothing to do, or None when its Spark job must run.

    Cheap S3 listings only. With `model` = `champion` the job resolves the model itself, so only an empty
    scoring root is known to be nothing to do here.
    """
    folders = list_batch_folders(scoring_root, s3_conn_id)
    if not folders:
        return f"no batch folder under {scoring_root}/"
    if model == MODEL_CHAMPION:
        return None
    done = score_summaries(scores_root, folders, model, s3_conn_id)
    if pending_batches(folders, model, done):
        return None
    return f"{model} has already scored every batch under {scoring_root}/"
