"""Browser tests: headless Chromium (Debian's `chromium`) driven by Playwright against a real Airflow UI."""

from __future__ import annotations


def pytest_configure(config):
    # Registered here as well as (ideally) in pyproject.toml, so `--strict-markers` accepts it either way.
    config.addinivalue_line("markers", "browser: drives the Airflow UI in headless Chromium (needs chromium)")
