"""The way users start runs: open the pipeline's trigger form in a browser, fill a parameter, trigger.

Starts its own Airflow (SQLite home in a temp folder, api-server on a free port, simple auth manager with
everyone admin: no login) and stops it at the end. No scheduler: a triggered run is created by the API
server and shows up queued, which is what this test is about; running it is the end-to-end tests' job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, json_rows

pytestmark = pytest.mark.browser

DAG_ID = "skin_lesion_pipeline"
CHROMIUM = os.environ.get("MOLESCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BATCH = "browser-batch-001"
SCREENSHOTS = Path(os.environ.get("MOLESCOPE_SCREENSHOTS", "/tmp"))
READY_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    for required in ("AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER"):
        if not os.environ.get(required):
            pytest.fail(
                f"{required} is not set: run the tests through `make test` (it sources scripts/env.sh)"
            )
    home = tmp_path_factory.mktemp("airflow-ui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API__WORKERS": "1",
    }
    for cmd in (["airflow", "db", "migrate"], ["airflow", "dags", "reserialize"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    log = (home / "api-server.log").open("w")
    proc = subprocess.Popen(
        ["airflow", "api-server", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=3)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"api-server did not come up; see {home / 'api-server.log'}")
                time.sleep(2)
        yield {"url": url, "env": env}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


RUNS_QUERY = """
import json
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
with create_session() as session:
    runs = session.query(DagRun).filter(DagRun.dag_id == {dag!r}).all()
    print(json.dumps([{{"run_id": r.run_id, "run_type": str(r.run_type), "conf": r.conf}} for r in runs]))
"""


def pipeline_runs(env: dict[str, str]) -> list[dict]:
    """run_id, run_type and conf of the pipeline's runs, read from the test's metadata DB."""
    code = RUNS_QUERY.format(dag=DAG_ID)
    done = subprocess.run(["python", "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json_rows(done.stdout)


def test_trigger_form_starts_a_run(airflow_ui, browser):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(60_000)
    page.goto(f"{airflow_ui['url']}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Trigger Dag - skin_lesion_pipeline")
    # The params render as form sections; open "Batch" and name the batch to ingest.
    for section in ("Batch", "Features", "Upsampling", "Models", "Evaluation"):
        expect(dialog.get_by_role("button", name=section, exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Batch", exact=True).click()
    batch_field = dialog.locator("#element_batch_id")
    expect(batch_field).to_be_visible()

    # A bad value is refused (the API validates the params against their JSON schema), with a message
    # naming the parameter; the form stays open and no run is created.
    trigger = dialog.get_by_role("button", name="Trigger", exact=True)
    batch_field.fill("../etc")
    trigger.click()
    page.wait_for_timeout(3000)
    page.screenshot(path=str(SCREENSHOTS / "molescope-trigger-form-invalid.png"), full_page=True)
    expect(dialog.get_by_text("Invalid input for param batch_id").first).to_be_visible()
    expect(dialog.get_by_text("does not match").first).to_be_visible()
    # The error toast sits over the Trigger button until it times out (it pauses under the mouse).
    page.mouse.move(0, 0)
    expect(page.get_by_text("Failed to Trigger Dag")).to_have_count(0, timeout=30_000)

    batch_field.fill(BATCH)
    # Leave the DAG paused (no scheduler here): the run is created and stays queued.
    unpause = dialog.get_by_text(f"Unpause {DAG_ID} on trigger")
    if unpause.count():
        checkbox = dialog.get_by_role("checkbox").first
        if checkbox.is_checked():
            unpause.click()
    page.screenshot(path=str(SCREENSHOTS / "molescope-trigger-form.png"), full_page=True)
    expect(trigger).to_be_enabled()
    trigger.click()
    expect(dialog).to_be_hidden()

    # The run appears: in the metadata DB with the form's conf ...
    deadline = time.monotonic() + 60
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = [r for r in pipeline_runs(airflow_ui["env"]) if (r["conf"] or {}).get("batch_id") == BATCH]
        if runs:
            break
        time.sleep(2)
    assert runs, (
        f"no run with batch_id={BATCH} after triggering from the form: {pipeline_runs(airflow_ui['env'])}"
    )
    assert runs[0]["run_type"].lower().endswith("manual")
    # The form sent every param (defaults included), so the run records what it will do.
    assert runs[0]["conf"]["backbone"] == "resnet50"
    # ... and in the UI's run list.
    page.goto(f"{airflow_ui['url']}/dags/{DAG_ID}/runs")
    expect(page.get_by_text(runs[0]["run_id"]).first).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "molescope-trigger-run.png"), full_page=True)
