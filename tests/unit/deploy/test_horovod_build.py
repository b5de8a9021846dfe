"""The Horovod build (scripts/horovod/): patches apply to the published sdist, the installed Horovod is the
one the script builds, and the Spark image builds it with the same script and checks it the same way.

The sdist comes from the wheel cache `make setup` fills (no network here); without it these skip, except
under CI=true (where `make setup` has just run) where that is an error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.stack_files import SPARK_DOCKERFILE, build_args, final_stage, parse

REPO = Path(__file__).resolve().parents[3]
HOROVOD = REPO / "scripts" / "horovod"
BUILD_SCRIPT = (HOROVOD / "build_wheel.sh").read_text()
VERSION = re.search(r"^HOROVOD_VERSION=(\S+)$", BUILD_SCRIPT, re.M).group(1)
SDIST_SHA256 = re.search(r"^SDIST_SHA256=(\S+)$", BUILD_SCRIPT, re.M).group(1)
PATCHES = {
    "cpu": ["tf221-no-xla-ops.patch"],
    "gpu": ["tf221-no-xla-ops.patch", "tf221-gpu-stream-handle.patch"],
}


def missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sdist_tree(tmp_path_factory) -> Path:
    cache = Path(
        os.environ.get(
            "MOLESCOPE_WHEEL_CACHE",
            Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "molescope" / "wheels",
        )
    )
    sdist = cache / "sdist" / f"horovod-{VERSION}.tar.gz"
    if not sdist.exists():
        missing(f"no Horovod sdist at {sdist} (`make setup` downloads it)")
    root = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(root, filter="data")
    return root / f"horovod-{VERSION}"


@pytest.mark.parametrize("variant", sorted(PATCHES))
def test_patches_apply_to_the_published_sdist(sdist_tree, variant, tmp_path):
    tree = tmp_path / "src"
    shutil.copytree(sdist_tree, tree)
    for name in PATCHES[variant]:
        result = subprocess.run(
            ["patch", "--forward", "--directory", str(tree), "-p1", "--input", str(HOROVOD / name)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    cmake = (tree / "horovod" / "tensorflow" / "CMakeLists.txt").read_text()
    assert "mpi_ops.cc" in cmake and "xla_mpi_ops.cc" not in cmake
    ops = (tree / "horovod" / "tensorflow" / "mpi_ops.cc").read_text()
    assert ("platform_specific_handle()" in ops) == (variant == "gpu")


def test_every_variant_patch_is_in_the_build_script():
    for names in PATCHES.values():
        for name in names:
            assert (HOROVOD / name).exists()
            assert f'"$HERE/{name}"' in BUILD_SCRIPT


def test_installed_horovod_is_the_built_version():
    try:
        import horovod
    except ImportError:
        missing("Horovod is not installed (`make setup` builds it)")
    assert horovod.__version__ == VERSION


def test_spark_image_builds_horovod_with_the_setup_script():
    structure = parse(SPARK_DOCKERFILE).structure
    froms = [i["value"] for i in structure if i["instruction"] == "FROM"]
    assert any(value.endswith(" AS horovod") for value in froms)
    builder = "\n".join(i["value"] for i in structure if i["instruction"] == "RUN")
    assert 'scripts/horovod/build_wheel.sh python3 "${HOROVOD_VARIANT}"' in builder
    stage = "\n".join(i["value"] for i in final_stage(SPARK_DOCKERFILE))
    assert "--from=horovod" in stage
    assert "pip install --no-deps /tmp/horovod-wheels/" in stage
    assert "scripts/horovod/check.py" in stage
    # The build stage installs the TensorFlow of the final stage.
    builder_args = {
        i["value"].partition("=")[0]: i["value"].partition("=")[2]
        for i in structure[: structure.index(final_stage(SPARK_DOCKERFILE)[0])]
        if i["instruction"] == "ARG"
    }
    final_args = build_args(SPARK_DOCKERFILE)
    for name in ("TENSORFLOW_VERSION", "TENSORFLOW_PACKAGE"):
        assert builder_args[name] == final_args[name], name
    assert builder_args["HOROVOD_VARIANT"] == "cpu"
