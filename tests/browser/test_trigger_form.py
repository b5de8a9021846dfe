"""The way users start runs: open the pipeline's trigger form in a browser, fill a parameter, trigger.

Starts its own Airflow (SQLite home in a temp folder, api-server on a free port, simple auth manager with
everyone admin: no login) and stops it at the end. No scheduler: a triggered run is created by the API
server and shows up queued, which is what this test is about; running it is the end-to-end tests' job.

No fixed sleeps and no short UI timeouts: on a loaded machine the UI fetches its data late, so every
expectation waits up to UI_TIMEOUT_MS, and the run list is reloaded until it shows the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from molescope.core import registry
from tests.airflow_live import Airflow
from tests.browser.conftest import UI_TIMEOUT_MS, require_chromium
from tests.helpers import wait_until

pytestmark = pytest.mark.browser

DAG_ID = "skin_lesion_pipeline"
BATCH = "browser-batch-001"
SCREENSHOTS = Path(os.environ.get("MOLESCOPE_SCREENSHOTS", "/tmp"))
#: The triggered run reaching the API and the UI's run list.
RUN_VISIBLE_TIMEOUT_S = 300
#: One look at the run list before it is loaded again.
RELOAD_EVERY_MS = 15_000


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory):
    require_chromium()
    for required in ("AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER"):
        if not os.environ.get(required):
            pytest.fail(
                f"{required} is not set: run the tests through `make test` (it sources scripts/env.sh)"
            )
    airflow = Airflow(tmp_path_factory.mktemp("airflow-ui"), dict(os.environ), all_admins=True)
    airflow.init()
    try:
        airflow.start()
        yield airflow
    finally:
        airflow.stop()


def form_runs(airflow: Airflow) -> list[dict]:
    """The pipeline's runs whose conf names the form's batch, from the REST API."""
    return [r for r in airflow.api.runs(DAG_ID).values() if (r["conf"] or {}).get("batch_id") == BATCH]


def run_list_shows(page, url: str, run_id: str) -> bool | str:
    """Load the run list afresh: True once it shows `run_id`, else the end of the page's text (what it saw).

    The page renders before it has fetched the runs, so one load may show an empty list on a busy machine.
    """
    from playwright.sync_api import TimeoutError as PageTimeout

    page.goto(url)
    try:
        page.get_by_text(run_id).first.wait_for(state="visible", timeout=RELOAD_EVERY_MS)
    except PageTimeout:
        return page.inner_text("body")[-300:]
    return True


def test_trigger_form_starts_a_run(airflow_ui, browser):
    from playwright.sync_api import TimeoutError as PageTimeout
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(f"{airflow_ui.url}/dags/{DAG_ID}")
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
    expect(dialog.get_by_text("Invalid input for param batch_id").first).to_be_visible()
    expect(dialog.get_by_text("does not match").first).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "molescope-trigger-form-invalid.png"), full_page=True)
    # The error toast sits over the Trigger button until it times out (it pauses under the mouse).
    page.mouse.move(0, 0)
    expect(page.get_by_text("Failed to Trigger Dag")).to_have_count(0)

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

    # The run appears: in the API with the form's conf ...
    runs = wait_until(
        f"a run with batch_id={BATCH} in the API", lambda: form_runs(airflow_ui), RUN_VISIBLE_TIMEOUT_S
    )
    assert runs[0]["run_type"].lower().endswith("manual")
    # The form sent every param (defaults included), so the run records what it will do.
    assert runs[0]["conf"]["backbone"] == registry.PIPELINE_BACKBONE
    # ... and in the UI's run list (reloaded until the list has fetched it).
    run_id = runs[0]["dag_run_id"]
    runs_page = f"{airflow_ui.url}/dags/{DAG_ID}/runs"
    wait_until(
        f"run {run_id} in the UI's run list",
        lambda: run_list_shows(page, runs_page, run_id),
        RUN_VISIBLE_TIMEOUT_S,
        done=lambda seen: seen is True,
        every_s=1,
        transient=(PageTimeout,),
    )
    page.screenshot(path=str(SCREENSHOTS / "molescope-trigger-run.png"), full_page=True)
