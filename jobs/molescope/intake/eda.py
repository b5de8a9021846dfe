"""clean's EDA figures: class distribution (malignant in red), age, sex and localization, per batch and over
every curated batch. Counts are aggregated in Spark; no image bytes leave the executors."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from molescope.core.constants import CLASSES, MALIGNANT
from molescope.core.registry import UNKNOWN_VALUE
from molescope.evaluation.charts import bar_chart, png_bytes
from molescope.io import storage

#: Bin width of the age histogram, years (HAM10000 ages are multiples of 5).
AGE_BIN_YEARS = 5
COLUMNS = ("dx", "age", "sex", "localization")


@dataclass(frozen=True)
class Profile:
    """Counts behind the figures."""

    dx: dict[str, int]
    age: dict[float, int]
    sex: dict[str, int]
    localization: dict[str, int]


def counts(df: DataFrame, column: str) -> dict[str, int]:
    return {row[0]: int(row[1]) for row in df.groupBy(column).count().collect()}


def profile(df: DataFrame) -> Profile:
    age_bin = (F.floor(F.col("age") / AGE_BIN_YEARS) * AGE_BIN_YEARS).cast(T.DoubleType())
    ages = {
        float(row[0]): int(row[1])
        for row in df.where(F.col("age").isNotNull()).groupBy(age_bin).count().collect()
    }
    return Profile(
        dx=counts(df, "dx"),
        age=dict(sorted(ages.items())),
        sex=counts(df, "sex"),
        localization=counts(df.fillna({"localization": UNKNOWN_VALUE}), "localization"),
    )


def _bars(title: str, values: dict, colors: list[str] | None = None) -> bytes:
    return png_bytes(
        bar_chart(
            list(values), {"images": list(values.values())}, title=title, ylabel="images", colors=colors
        )
    )


def figure_pngs(prof: Profile, scope: str) -> dict[str, bytes]:
    """PNG bytes by file name: class distribution (malignant in red), age histogram, sex, localization."""
    dx = {c: prof.dx.get(c, 0) for c in CLASSES}
    dx_colors = ["tab:red" if c in MALIGNANT else "tab:blue" for c in CLASSES]
    ages = {f"{age:g}": n for age, n in prof.age.items()}
    localization = dict(sorted(prof.localization.items(), key=lambda item: -item[1]))
    return {
        f"{scope}_class_distribution.png": _bars(
            f"{scope}: diagnosis (red = malignant, blue = benign)", dx, dx_colors
        ),
        f"{scope}_age.png": _bars(
            f"{scope}: age ({AGE_BIN_YEARS}-year bins)" if ages else f"{scope}: age (none)", ages
        ),
        f"{scope}_sex.png": _bars(f"{scope}: sex", dict(sorted(prof.sex.items()))),
        f"{scope}_localization.png": _bars(f"{scope}: localization", localization),
    }


def write_figures(
    spark: SparkSession, batch: DataFrame, everything: DataFrame | None, folder: str
) -> list[str]:
    """Write the batch's and (when given) the cumulative figures under `folder`; return their URIs."""
    scopes = {"batch": batch.select(*COLUMNS)}
    if everything is not None:
        scopes["cumulative"] = everything.select(*COLUMNS)
    written = []
    for scope, df in scopes.items():
        for name, png in figure_pngs(profile(df), scope).items():
            uri = storage.join(folder, name)
            storage.write_bytes(spark, uri, png)
            written.append(uri)
    return written
