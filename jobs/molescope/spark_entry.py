"""Application file for spark-submit: `spark-submit .../molescope/spark_entry.py <stage> [options]`.

Identical to running `molescope <stage> ...`; Airflow's SparkSubmitOperator submits this file.
"""

from molescope.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
