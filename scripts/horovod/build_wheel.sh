#!/usr/bin/env bash
# Builds the Horovod wheel once per (sdist, patches, TensorFlow, Python, variant) and prints its path.
#   build_wheel.sh PYTHON [cpu|gpu]
# PYTHON is the interpreter whose TensorFlow Horovod compiles against (cmake imports it: hence
# --no-build-isolation). The published sdist is patched (scripts/horovod/*.patch) because Horovod 0.28.1, the
# newest release, does not build against TensorFlow 2.21 as published.
# The wheel is cached outside the checkout, in $MOLESCOPE_WHEEL_CACHE (default
# ${XDG_CACHE_HOME:-~/.cache}/molescope/wheels), under a key hashing everything that goes into the build, so
# a re-run, another worktree or a CI run on the same machine reuses it; an empty cache costs ~15 min on 2 cores.
# Used by scripts/setup.sh and docker/spark/Dockerfile. Progress and errors go to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${1:?usage: build_wheel.sh PYTHON [cpu|gpu]}"
VARIANT="${2:-cpu}"
HOROVOD_VERSION=0.28.1
SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
# Build tool only (not installed into the venv): setuptools 65, which a Python 3.11 venv starts with, has no
# bdist_wheel of its own and wheel>=0.46 no longer provides one.
SETUPTOOLS_PIN=setuptools==80.9.0
CACHE="${MOLESCOPE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/molescope/wheels}"

die() { echo "build_wheel: $*" >&2; exit 1; }
log() { echo "build_wheel: $*" >&2; }

# Variant: the patches and the build settings. Gloo for the CPU collectives in both (no MPI needed).
build_env=(HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1
           HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo)
patches=("$HERE/tf221-no-xla-ops.patch")
case "$VARIANT" in
  cpu) ;;
  # GPU: untested here (no CUDA toolkit on the build machines); needs nvcc (CUDA 12) and the NCCL headers,
  # found through CUDA_HOME / HOROVOD_NCCL_HOME (docker/spark/Dockerfile documents the image set-up).
  gpu) build_env+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=STATIC)
       patches+=("$HERE/tf221-gpu-stream-handle.patch") ;;
  *) die "variant must be cpu or gpu, not '$VARIANT'" ;;
esac

for tool in cmake g++ make patch; do
  command -v "$tool" > /dev/null || die "'$tool' is needed to build Horovod (e.g. apt-get install cmake g++ make patch)"
done
tf_version=$("$PY" -c 'import importlib.metadata as m; d = m.packages_distributions()["tensorflow"][0]; print(m.version(d))') \
  || die "$PY has no TensorFlow: install requirements.lock first"
py_tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
# The key: everything that changes the binary, including HOROVOD_* settings from the caller's environment.
key=$( { echo "$SDIST_SHA256 $tf_version $py_tag $VARIANT $SETUPTOOLS_PIN ${build_env[*]}"; { env | grep -E '^HOROVOD_' || true; } | sort
         cat "${patches[@]}"; } \
       | sha256sum | cut -c1-16)
out="$CACHE/horovod-$HOROVOD_VERSION-$key"
if compgen -G "$out/horovod-*.whl" > /dev/null; then
  log "cached wheel $out (TensorFlow $tf_version, $VARIANT)"
  echo "$out"/horovod-*.whl
  exit 0
fi

# The sdist, kept in the cache too (a cold build after a lost wheel needs no network); its hash is checked.
sdist="$CACHE/sdist/horovod-$HOROVOD_VERSION.tar.gz"
if [ ! -f "$sdist" ] || ! echo "$SDIST_SHA256  $sdist" | sha256sum --check --status; then
  mkdir -p "$CACHE/sdist"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
      "horovod==$HOROVOD_VERSION" -d "$CACHE/sdist" >&2
  echo "$SDIST_SHA256  $sdist" | sha256sum --check --status || die "sha256 of $sdist is not $SDIST_SHA256"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work"
src="$work/horovod-$HOROVOD_VERSION"
for p in "${patches[@]}"; do patch --quiet --forward --directory "$src" -p1 < "$p" || die "patch $p failed"; done
"$PY" -m pip install --quiet --target "$work/tools" "$SETUPTOOLS_PIN" >&2

jobs="${HOROVOD_BUILD_JOBS:-$(nproc)}"
build_log="$CACHE/logs/horovod-$HOROVOD_VERSION-$key.log"
mkdir -p "$CACHE/logs"
log "building Horovod $HOROVOD_VERSION ($VARIANT, TensorFlow $tf_version, -j$jobs; ~15 min on 2 cores); log: $build_log"
start=$SECONDS
# Compiler progress ("[ 42%] Building CXX object ...") is shown; the full output goes to the log.
env "${build_env[@]}" MAKEFLAGS="-j$jobs" PYTHONPATH="$work/tools" \
    "$PY" -m pip wheel --verbose --no-build-isolation --no-deps --wheel-dir "$work/dist" "$src" 2>&1 \
    | tee "$build_log" | grep --line-buffered -oE '^ *\[ *[0-9]+%\] (Building|Linking).*' \
    | sed -u -E 's#[^ ]*/##g' >&2 || true
compgen -G "$work/dist/horovod-*.whl" > /dev/null || die "build failed; see the end of $build_log"
mkdir -p "$out.tmp.$$" && mv "$work"/dist/horovod-*.whl "$out.tmp.$$/"
mv -T "$out.tmp.$$" "$out" 2> /dev/null || rm -rf "$out.tmp.$$"  # another build won the race: keep its wheel
log "built $(basename "$out"/horovod-*.whl) in $((SECONDS - start)) s ($(du -h "$out"/horovod-*.whl | cut -f1))"
echo "$out"/horovod-*.whl
