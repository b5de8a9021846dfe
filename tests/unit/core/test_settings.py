"""molescope.core.settings: one declaration per field gives the option, its default, its parser and
validation."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from molescope.core import registry
from molescope.core import settings as s


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


def test_a_hyper_option_takes_everything_from_the_registry():
    lr_reg = next(h for h in registry.hyper_parameters() if h.name == "lr_reg")

    @dataclass(frozen=True)
    class Tuned(Example):
        lr_reg: float = s.option(hyper="lr_reg")

    field = next(f for f in fields(Tuned) if f.name == "lr_reg")
    assert field.default == lr_reg.default and field.metadata[s.HYPER] == "lr_reg"
    cli = field.metadata[s.CLI]
    assert (cli.flag, cli.type, cli.help) == (lr_reg.flag, float, lr_reg.help)
    parser = argparse.ArgumentParser()
    Tuned.add_arguments(parser)
    assert Tuned.from_args(parser.parse_args(["--out", "o", "--lr-reg", "0.5"])).lr_reg == 0.5
    assert s.declared_hypers(Tuned) == {"lr_reg": field}
    with pytest.raises(ValueError, match="unknown hyper-parameter 'svm_c'"):
        s.option(hyper="svm_c")
    with pytest.raises(TypeError, match="from the registry"):
        s.option(0.1, hyper="lr_reg")


def test_with_registry_hypers_adds_only_the_undeclared_hyper_parameters():
    names = [h.name for h in registry.hyper_parameters()]
    # A class declaring the generated lines is returned as it is.
    source = f"class Declared(Example):\n{s.hyper_declarations()}\n"
    namespace = {"Example": Example, "option": s.option, "__name__": __name__}
    exec(compile(source, "<declarations>", "exec"), namespace)
    declared = dataclass(frozen=True)(namespace["Declared"])
    assert s.with_registry_hypers(declared) is declared
    assert list(s.declared_hypers(declared)) == names
    # A class declaring none gets a subclass of the same name with every one (a type checker sees `Example`).
    extended = s.with_registry_hypers(Example)
    assert extended is not Example and issubclass(extended, Example)
    assert (extended.__name__, extended.__module__) == ("Example", Example.__module__)
    assert list(s.declared_hypers(extended)) == names
    parser = argparse.ArgumentParser()
    extended.add_arguments(parser)
    got = extended.from_args(parser.parse_args(["--out", "o", "--finetune-tta", "hflip"]))
    assert (got.out, got.finetune_tta, got.finetune_max_images) == ("o", "hflip", None)
