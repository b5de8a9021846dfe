"""molescope.settings: one declaration per field gives the option, its default, its parser and validation."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from molescope import settings as s


@dataclass(frozen=True)
class Example(s.CliSettings):
    out: str = s.option(help="required: no default")
    batches: tuple[str, ...] | None = s.option(None, type=s.comma_list, help="comma list")
    pca_k: int | None = s.option(None, flag="--pca", type=s.optional_int, help="renamed flag")
    figures: bool = s.option(True, flag="--no-figures", action="store_false", help="negated switch")
    recall: float = s.option(0.8, type=s.fraction(), help="(0, 1]")
    mode: str = s.option("a", choices=("a", "b"), help="closed list")

    def validate(self) -> None:
        if self.mode == "b" and not self.batches:
            raise ValueError("--mode b needs --batches")


def parse(argv: list[str]) -> Example:
    parser = argparse.ArgumentParser()
    Example.add_arguments(parser)
    return Example.from_args(parser.parse_args(argv))


def test_defaults_and_parsers():
    assert parse(["--out", "o"]) == Example(out="o")
    got = parse(
        ["--out", "o", "--batches", "a, b,", "--pca", "8", "--no-figures", "--recall", "1", "--mode", "a"]
    )
    assert (got.batches, got.pca_k, got.figures, got.recall) == (("a", "b"), 8, False, 1.0)
    assert parse(["--out", "o", "--pca", "none", "--batches", ""]).pca_k is None


@pytest.mark.parametrize(
    "argv", [[], ["--out", "o", "--recall", "0"], ["--out", "o", "--mode", "c"], ["--out", "o", "--pca", "x"]]
)
def test_bad_command_lines_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert "error" in capsys.readouterr().err


def test_validate_runs_on_every_construction():
    with pytest.raises(ValueError, match="needs --batches"):
        parse(["--out", "o", "--mode", "b"])
    with pytest.raises(ValueError, match="needs --batches"):
        Example(out="o", mode="b")


def test_extended_settings_get_registry_fields():
    extra = [("svm_c", float, s.option(1.0, flag="--svm-c", type=float, help="margin"))]
    Extended = s.extended(Example, "Extended", extra)
    parser = argparse.ArgumentParser()
    Extended.add_arguments(parser)
    got = Extended.from_args(parser.parse_args(["--out", "o", "--svm-c", "2.5"]))
    assert (got.out, got.svm_c) == ("o", 2.5)
    assert [f.name for f in fields(Extended)][-1] == "svm_c"
    assert Extended.__module__ == Example.__module__
