"""`molescope <stage>`: the one entry point for every stage.

Airflow's SparkSubmitOperator submits `molescope/spark_entry.py`, which calls `main()` here, so a stage run
by hand (`molescope clean --help`) and a stage run by the DAG are the same code path.

Each stage module (and each local command) provides:

- `Settings`: a frozen dataclass deriving from `molescope.settings.CliSettings`, each field declared once with
  its option (`add_arguments(parser)` and `from_args(namespace)` come from those declarations);
- `run(spark, settings) -> dict`: the thin I/O shell around the stage's pure transforms, returning its
  summary. Stages never import each other: what two stages share lives in a library module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from molescope.registry import SPARK_STAGES as STAGE_NAMES

#: Spark stages, in pipeline order, mapped to their modules.
SPARK_STAGES: dict[str, str] = {name: f"molescope.stages.{name}" for name in STAGE_NAMES}
#: Commands that need no SparkSession.
LOCAL_COMMANDS: dict[str, str] = {
    "synth": "molescope.synth",
    "land": "molescope.land",
    "spark-defaults": "molescope.spark_defaults",
}

log = logging.getLogger("molescope")


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # py4j logs every gateway call at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molescope", description=__doc__.splitlines()[0])
    parser.add_argument("--master", default=None, help="Spark master when not run under spark-submit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, module_name in {**SPARK_STAGES, **LOCAL_COMMANDS}.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
        module.Settings.add_arguments(sub)
        sub.set_defaults(module_name=module_name)
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ModuleType, Any]:
    """(parsed arguments, the command's module, its Settings) of a command line (what the DAG tasks run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args.module_name)
    try:
        return args, module, module.Settings.from_args(args)
    except ValueError as error:  # a setting that cannot run: one line and exit 2, before any work starts
        parser.error(f"{args.command}: {error}")


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    args, module, settings = parse_settings(argv)
    started = time.monotonic()
    if args.command in LOCAL_COMMANDS:
        summary = module.run(settings)
    else:
        from molescope.session import get_spark

        spark = get_spark(f"molescope-{args.command}", master=args.master)
        try:
            summary = module.run(spark, settings)
        finally:
            spark.stop()
    log.info("%s finished in %.1fs", args.command, time.monotonic() - started)
    log.info("summary %s", json.dumps({"stage": args.command, **summary}, default=str, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
