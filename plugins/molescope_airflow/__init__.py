"""Airflow-side helpers for molescope DAGs: the Spark stage operator and its factory.

Lives in plugins/ (on Airflow's sys.path) so DAG files stay thin. Imports nothing heavy: the Spark jobs run
in spark-submit processes, never in the DAG processor.
"""
