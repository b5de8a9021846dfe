"""Print a spark-defaults.conf with the S3A settings (for the Docker images and hand-run clusters)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from molescope.sparkconf import S3Endpoint, spark_defaults_text


@dataclass(frozen=True)
class Settings:
    endpoint: str | None
    jars_dir: str
    path_style: bool

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--endpoint", default=None, help="S3 endpoint URL; omit for AWS S3")
        parser.add_argument("--jars-dir", required=True, help="folder holding the S3A jars")
        parser.add_argument("--virtual-host-style", action="store_true", help="disable path-style access")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(endpoint=args.endpoint, jars_dir=args.jars_dir, path_style=not args.virtual_host_style)


def run(settings: Settings) -> dict:
    text = spark_defaults_text(
        S3Endpoint(url=settings.endpoint, path_style=settings.path_style), settings.jars_dir
    )
    print(text, end="")
    return {"lines": text.count("\n")}
