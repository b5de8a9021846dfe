"""scripts/env.sh: the environment every Makefile target, .ci/run and the test session source."""

import json
import subprocess
from pathlib import Path

ENV_SH = Path(__file__).resolve().parents[3] / "scripts" / "env.sh"


def sourced(times: int, tmp_path: Path, preset: str = "") -> dict:
    """Source env.sh `times` times in a clean bash and return the Spark connection it leaves."""
    script = f'{preset} export MOLESCOPE_STATE="{tmp_path}"; ' + f'. "{ENV_SH}"; ' * times
    script += 'printf %s "$AIRFLOW_CONN_SPARK_DEFAULT"'
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}
    )
    return json.loads(out.stdout)


def test_spark_connection_is_json_after_sourcing_twice(tmp_path):
    once, twice = sourced(1, tmp_path), sourced(2, tmp_path)
    assert once == twice
    assert once["conn_type"] == "spark" and once["host"] == "local[2]"


def test_spark_connection_from_the_caller_wins(tmp_path):
    conn = {"conn_type": "spark", "host": "spark://master:7077", "extra": {"deploy-mode": "client"}}
    preset = f"export AIRFLOW_CONN_SPARK_DEFAULT='{json.dumps(conn)}';"
    assert sourced(2, tmp_path, preset) == conn
