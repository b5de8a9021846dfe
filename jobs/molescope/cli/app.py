"""`molescope <stage>`: the one entry point for every stage.

Airflow's SparkSubmitOperator submits `molescope/cli/spark_entry.py`, which calls `main()` here, so a stage
run by hand (`molescope clean --help`) and a stage run by the DAG are the same code path.

Each stage module (and each local command) provides:

- `Settings`: a frozen dataclass deriving from `molescope.core.settings.CliSettings`, each field declared once
  with its option (`add_arguments(parser)` and `from_args(namespace)` come from those declarations);
- `run(spark, settings) -> dict`: the thin I/O shell around the stage's pure transforms, returning its
  summary. Stages never import each other: what two stages share lives in a library module.

Errors. The project's own exceptions (`molescope.core.errors.MolescopeError`, and ValueError,
FileNotFoundError or RuntimeError raised by molescope's code: a bad input, setting or storage answer) end the
command with one line, `molescope <command>: error: <what> (<type>)`, and exit status 1; the traceback goes to
the log file (`--log-file`) or, with `--debug`, to stderr. Any other exception is a bug or an outage and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from molescope.core.errors import MolescopeError
from molescope.core.paths import PACKAGE_DIR
from molescope.core.registry import SPARK_STAGES as STAGE_NAMES
from molescope.io import storage

#: Spark stages, in pipeline order, mapped to their modules.
SPARK_STAGES: dict[str, str] = {name: f"molescope.stages.{name}" for name in STAGE_NAMES}
#: Commands that need no SparkSession.
LOCAL_COMMANDS: dict[str, str] = {
    "synth": "molescope.intake.synth",
    "land": "molescope.intake.land",
    "spark-defaults": "molescope.io.spark_defaults",
}

log = logging.getLogger("molescope")


#: Built-in exceptions that molescope's own code raises for a bad input, setting or storage answer.
OWN_BUILTINS = (ValueError, FileNotFoundError, RuntimeError)
#: Exit status of a command that ended with one of the project's own errors.
EXIT_ERROR = 1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging(log_file: str | None = None) -> logging.FileHandler | None:
    """Log to stderr (and `log_file`); returns the file's handler, None without one."""
    file_handler = logging.FileHandler(log_file) if log_file else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file_handler is not None:
        handlers.append(file_handler)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
    # py4j logs every gateway call at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return file_handler


def is_own_error(error: BaseException) -> bool:
    """True for the project's own exceptions: MolescopeError, or a built-in one raised in molescope's code."""
    if isinstance(error, MolescopeError):
        return True
    if not isinstance(error, OWN_BUILTINS) or error.__traceback__ is None:
        return False
    raised_in = traceback.extract_tb(error.__traceback__)[-1].filename
    return Path(raised_in).resolve().is_relative_to(PACKAGE_DIR)


def error_line(command: str, error: BaseException) -> str:
    """`molescope <command>: error: <message> (<type>)` on one line."""
    message = " ".join(str(error).split()) or type(error).__name__
    return f"molescope {command}: error: {message} ({type(error).__name__})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molescope", description=__doc__.splitlines()[0])
    parser.add_argument("--master", default=None, help="Spark master when not run under spark-submit")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    parser.add_argument("--log-file", default=None, help="also log here (with the traceback of an error)")
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


def run_command(args: argparse.Namespace, module: ModuleType, settings: Any) -> dict[str, Any]:
    if args.command in LOCAL_COMMANDS:
        return module.run(settings)
    from molescope.io.session import get_spark

    spark = get_spark(f"molescope-{args.command}", master=args.master)
    try:
        with storage.job_storage_errors(spark):
            return module.run(spark, settings)
    finally:
        spark.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    file_handler = _configure_logging(args.log_file)
    started = time.monotonic()
    try:
        module = importlib.import_module(args.module_name)
        summary = run_command(args, module, module.Settings.from_args(args))
    except Exception as error:
        if args.debug or not is_own_error(error):
            raise
        if file_handler is not None:
            logging.getLogger().removeHandler(file_handler)
            file_handler.close()  # flushed and closed before the traceback is appended
            with open(args.log_file, "a") as handle:
                traceback.print_exception(error, file=handle)
        print(error_line(args.command, error), file=sys.stderr, flush=True)
        return EXIT_ERROR
    log.info("%s finished in %.1fs", args.command, time.monotonic() - started)
    log.info("summary %s", json.dumps({"stage": args.command, **summary}, default=str, sort_keys=True))
    return 0
