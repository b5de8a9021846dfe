"""What the driver (`molescope.distributed.launch`) and every Horovod rank (`molescope.distributed.rank`)
share: the job description pickled to the ranks, the error type and marker, and storage as a rank sees it
(pyarrow on a local path or s3a://, no JVM). Neither side imports the other."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from molescope.core.errors import MolescopeError
from molescope.core.registry import DEFAULT_NUM_PROC
from molescope.core.sparkconf import ENV_S3_ENDPOINT

SHARD_COL = "_shard"
MODEL_FILE = "model.keras"
MONITORS: dict[str, str] = {"val_loss": "min", "val_balanced_accuracy": "max"}
HISTORY_KEYS: tuple[str, ...] = ("loss", "val_loss", "val_balanced_accuracy", "epoch_rows", "epoch_seconds")
#: Marker a failing rank prints before exiting; the driver turns it into the task's error message.
RANK_ERROR = "MOLESCOPE_RANK_ERROR"
#: A rank's error is cut to this many characters (TensorFlow errors carry whole stack traces).
ERROR_CHARS = 300


class DistributedTrainingError(MolescopeError, RuntimeError):
    """Distributed training cannot start or a rank failed; the message is one line."""


@dataclass(frozen=True)
class DistributedConfig:
    """How to run: ranks, epochs, early stopping, where the shards and the model go."""

    staging_uri: str
    num_proc: int = DEFAULT_NUM_PROC
    epochs: int = 20
    patience: int = 3
    monitor: str = "val_loss"
    key_col: str = "image_id"
    scale_lr: bool = True
    seed: int = 42
    #: Seconds the Spark tasks may take to start and register (Horovod's start_timeout).
    start_timeout_s: int = 120

    def __post_init__(self) -> None:
        if self.num_proc < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError("num_proc, epochs and patience must be >= 1")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {tuple(MONITORS)}, got {self.monitor!r}")


@dataclass(frozen=True)
class RankJob:
    """What every rank receives (pickled by Horovod): the factories and where its data is."""

    build_model: Callable[[], Any]
    make_dataset: Callable[..., Any]
    config: DistributedConfig
    has_validation: bool


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for a local path, file: or s3a:// URI; S3 settings from the environment."""
    from pyarrow import fs

    parsed = urlparse(uri)
    if parsed.scheme in ("s3a", "s3"):
        endpoint = urlparse(os.environ.get(ENV_S3_ENDPOINT) or "https://")
        s3 = fs.S3FileSystem(
            endpoint_override=endpoint.netloc or None,
            scheme=endpoint.scheme,
            region=os.environ.get("AWS_REGION", "us-east-1"),
        )
        return s3, parsed.netloc + parsed.path
    if parsed.scheme in ("", "file"):
        return fs.LocalFileSystem(), parsed.path
    raise DistributedTrainingError(f"staging URI {uri}: use a local path, file: or s3a://")


def read_shard(uri: str, rank: int) -> Any:
    """This rank's partition of a staged table (None when it has no rows)."""
    import pyarrow.parquet as pq
    from pyarrow import fs

    filesystem_, path = filesystem(join(uri, f"{SHARD_COL}={rank}"))
    if filesystem_.get_file_info(path).type == fs.FileType.NotFound:
        return None
    return pq.read_table(path, filesystem=filesystem_)


def save_model(model: Any, uri: str) -> None:
    """Keras saves to local files only: write a temp file, then copy it to `uri` so that a reader sees the
    whole model or none (as `molescope.io.storage.write_bytes`): on S3 the object appears when its upload
    completes; on a local disk the copy goes to a hidden name beside `uri`, renamed over it at the end."""
    from pyarrow import fs

    filesystem_, path = filesystem(uri)
    local_disk = isinstance(filesystem_, fs.LocalFileSystem)
    folder, name = path.rsplit("/", 1) if "/" in path else (".", path)
    written = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp" if local_disk else path
    with tempfile.TemporaryDirectory(prefix="molescope-hvd-") as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        model.save(local)
        if local_disk:
            filesystem_.create_dir(folder)
        with open(local, "rb") as source, filesystem_.open_output_stream(written) as target:
            target.write(source.read())
    if local_disk:
        filesystem_.move(written, path)
