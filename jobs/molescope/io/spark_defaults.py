"""Print a spark-defaults.conf with the S3A settings (for the Docker images and hand-run clusters)."""

from __future__ import annotations

from dataclasses import dataclass

from molescope.core.settings import CliSettings, option
from molescope.core.sparkconf import S3Endpoint, spark_defaults_text


@dataclass(frozen=True)
class Settings(CliSettings):
    jars_dir: str = option(help="folder holding the S3A jars")
    endpoint: str | None = option(None, help="S3 endpoint URL; omit for AWS S3")
    path_style: bool = option(
        True, flag="--virtual-host-style", action="store_false", help="disable path-style access"
    )


def run(settings: Settings) -> dict:
    text = spark_defaults_text(
        S3Endpoint(url=settings.endpoint, path_style=settings.path_style), settings.jars_dir
    )
    print(text, end="")
    return {"lines": text.count("\n")}
