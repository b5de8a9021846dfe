"""Registers molescope's operator extra links with Airflow (needed for the UI to show them)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from molescope_airflow.links import ReportLink


class MolescopePlugin(AirflowPlugin):
    name = "molescope"
    operator_extra_links = [ReportLink()]
