"""Application file for spark-submit: `spark-submit .../molescope/cli/spark_entry.py <stage> [options]`.

Identical to running `molescope <stage> ...`; Airflow's SparkSubmitOperator submits this file.
"""

from molescope.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
