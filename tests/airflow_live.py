"""A throw-away Airflow for the live tests, and a client of its REST API.

`Airflow` owns an Airflow home in a temp folder (SQLite metadata DB, generated admin password), starts the
components a user runs (api-server, scheduler, dag-processor, triggerer) on a free port and stops exactly
those. `AirflowApi` drives it through `/api/v2` with a JWT from the simple auth manager: state queries are
plain GETs (safe to repeat), and the two calls that create something (trigger a run, create a backfill)
look at the state before they ever re-send, so a request whose answer was lost is never applied twice.

Why the REST API and not the CLI: an `airflow` CLI call opens the SQLite DB itself and, on a loaded
machine, meets a scheduler transaction and fails with "database is locked" - possibly *after* its change
was committed (`backfill create` commits the backfill before it creates its runs). Re-running it then
creates a second backfill (AlreadyRunningBackfill). The api-server is one process that owns the DB access,
and its answers say what happened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.helpers import Budget, Service, free_port, note, run_command, wait_until

#: SQLite's busy timeout: a writer waits this long for the lock before "database is locked" (pysqlite's
#: default, 5 s, is shorter than a write transaction can take when the machine is loaded).
SQLITE_BUSY_TIMEOUT_S = 60
#: A request to the API may wait for the SQLite lock as long; its client waits a little longer.
HTTP_TIMEOUT_S = SQLITE_BUSY_TIMEOUT_S + 60
#: Repeating a GET that met a busy server: for at most this long.
API_RETRY_S = 300
#: Start-up of the components (imports, DB checks) on a loaded machine.
START_TIMEOUT_S = 600
#: Final states of a dag run.
FINAL = ("success", "failed")


class ServerBusy(OSError):
    """The API answered 5xx (busy, database locked, restarting): the request may be repeated or checked."""


class AirflowApi:
    """`/api/v2` of one api-server, authenticated with a JWT from the simple auth manager."""

    def __init__(self, url: str, password_file: Path | None):
        self.url = url
        self.password_file = password_file  # None: everybody is admin (no credentials needed)
        self.http = requests.Session()
        self._token: str | None = None

    def _login(self) -> str:
        if self.password_file is None:
            answer = self.http.get(f"{self.url}/auth/token", timeout=HTTP_TIMEOUT_S)
        else:
            password = json.loads(self.password_file.read_text())["admin"]
            body = {"username": "admin", "password": password}
            answer = self.http.post(f"{self.url}/auth/token", json=body, timeout=HTTP_TIMEOUT_S)
        if answer.status_code >= 500:
            raise ServerBusy(f"login: {answer.status_code} {answer.text[:300]}")
        return self.body(answer)["access_token"]

    def request(self, method: str, path: str, **kwargs: Any):
        """One request; 5xx raises ServerBusy, 401 logs in again once, other answers are returned."""
        for _ in range(2):
            if self._token is None:
                self._token = self._login()
            headers = {"Authorization": f"Bearer {self._token}"}
            answer = self.http.request(
                method, f"{self.url}/api/v2{path}", headers=headers, timeout=HTTP_TIMEOUT_S, **kwargs
            )
            if answer.status_code != 401:
                break
            self._token = None
        if answer.status_code >= 500:
            raise ServerBusy(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer

    @staticmethod
    def body(answer) -> Any:
        """The answer's JSON; a refusal (4xx) fails the test at once: asking again would not change it."""
        if answer.status_code >= 400:
            pytest.fail(f"{answer.request.method} {answer.url}: {answer.status_code} {answer.text[:1000]}")
        return answer.json()

    def get(self, path: str, missing_ok: bool = False, **params: Any) -> Any:
        """GET's JSON, repeated while the server is busy (a GET changes nothing); None for 404 if allowed."""

        def once():
            answer = self.request("GET", path, params=params)
            if answer.status_code == 404 and missing_ok:
                return {"missing": True}
            return {"body": self.body(answer)}

        found = wait_until(f"GET {path}", once, API_RETRY_S, every_s=2)
        return found.get("body")

    # -- queries -----------------------------------------------------------------------------------------

    def runs(self, dag_id: str) -> dict[str, dict]:
        """run id -> dag run (state, logical_date, run_type, conf, ...)."""
        body = self.get(f"/dags/{dag_id}/dagRuns", limit=100)
        return {r["dag_run_id"]: r for r in body["dag_runs"]}

    @staticmethod
    def run_path(dag_id: str, run_id: str) -> str:
        """The run's URL path (run ids hold `:` and `+`: quoted)."""
        return f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"

    def run(self, dag_id: str, run_id: str) -> dict | None:
        return self.get(self.run_path(dag_id, run_id), missing_ok=True)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        body = self.get(f"{self.run_path(dag_id, run_id)}/taskInstances", limit=100)
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {task: ti["state"] for task, ti in self.task_instances(dag_id, run_id).items()}

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """The text of the task's latest try."""
        tries = self.task_instances(dag_id, run_id)[task_id]["try_number"]
        path = f"{self.run_path(dag_id, run_id)}/taskInstances/{task_id}/logs/{tries}"
        content = self.get(path, full_content="true")["content"]
        return "\n".join(e.get("event", json.dumps(e)) if isinstance(e, dict) else str(e) for e in content)

    def execution_timeout_s(self, dag_id: str) -> float:
        """What Airflow allows one try of each of the DAG's tasks: the sum of their execution timeouts."""
        total = 0.0
        for task in self.get(f"/dags/{dag_id}/tasks")["tasks"]:
            timeout = task.get("execution_timeout") or {}
            total += timeout.get("days", 0) * 86400 + timeout.get("seconds", 0)
        return total

    def active_backfills(self, dag_id: str) -> list[dict]:
        return [b for b in self.get("/backfills", dag_id=dag_id)["backfills"] if not b["completed_at"]]

    def queued_asset_events(self, dag_id: str) -> list[dict]:
        """Asset events that will trigger a run of `dag_id` that does not exist yet."""
        return self.get(f"/dags/{dag_id}/assets/queuedEvents")["queued_events"]

    # -- changes -----------------------------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        def once():  # setting a flag: repeating it is harmless
            answer = self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
            return not self.body(answer)["is_paused"]

        wait_until(f"unpause {dag_id}", once, API_RETRY_S, every_s=2)

    def trigger(self, dag_id: str, run_id: str, conf: dict, logical_date: str | None = None) -> dict:
        """Create the run `run_id` once: after a lost answer, the run is looked up before any re-send."""
        body = {"dag_run_id": run_id, "logical_date": logical_date, "conf": conf}

        def once():
            existing = self.run(dag_id, run_id)
            if existing is None:
                answer = self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)
                if answer.status_code != 409:  # 409: it exists after all (an earlier send got through)
                    return self.body(answer)
                existing = self.run(dag_id, run_id)
            if existing["conf"] != conf:
                pytest.fail(f"{dag_id}: a run {run_id} exists with another conf: {existing['conf']}")
            return existing

        return wait_until(f"trigger {dag_id} {run_id}", once, API_RETRY_S, every_s=5)

    def create_backfill(self, dag_id: str, from_date: str, to_date: str, **options: Any) -> dict:
        """Create one backfill; after a lost answer or a busy server, adopt it if it was created after all.

        Never a blind re-send: `backfill create` commits the backfill before its runs, so a request that
        failed half-way may have left it in place (Airflow then answers the next one AlreadyRunningBackfill).
        """
        from_date, to_date = (d if "T" in d else f"{d}T00:00:00Z" for d in (from_date, to_date))
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date}
        body.update(options)

        def ours() -> dict | None:
            for backfill in self.active_backfills(dag_id):
                if (backfill["from_date"][:10], backfill["to_date"][:10]) == (from_date[:10], to_date[:10]):
                    return backfill
            return None

        def once():
            found = ours()
            if found:
                return found
            answer = self.request("POST", "/backfills", json=body)
            if answer.status_code == 409:
                pytest.fail(f"another backfill of {dag_id} is running: {self.active_backfills(dag_id)}")
            return self.body(answer)

        return wait_until(f"backfill {dag_id} {from_date}..{to_date}", once, API_RETRY_S, every_s=10)


class Airflow:
    """An Airflow home in `home` (SQLite), its components on a free port, and its REST API."""

    def __init__(self, home: Path, base_env: dict[str, str], all_admins: bool = False, **env: str):
        port = free_port()
        self.home = home
        self.url = f"http://127.0.0.1:{port}"
        passwords = home / "passwords.json"
        self.env = {
            **base_env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout={SQLITE_BUSY_TIMEOUT_S}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(all_admins),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # A loaded machine: DAG files parse slower and API calls wait for the SQLite lock (see above).
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
            "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "300",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": str(HTTP_TIMEOUT_S),
            # The DAG files do not change during a test session: re-parse them rarely.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            **env,
        }
        self.api = AirflowApi(self.url, None if all_admins else passwords)
        self.services: list[Service] = []

    def init(self, pools: Iterable[tuple[str, int]] = ()) -> None:
        """Migrate the metadata DB, create pools, serialize the DAGs (before any component runs)."""
        run_command(["airflow", "db", "migrate"], self.env)
        for name, slots in pools:
            run_command(["airflow", "pools", "set", name, str(slots), f"{name} (tests)"], self.env)
        run_command(["airflow", "dags", "reserialize"], self.env)

    def start(self, *components: str) -> None:
        """Start the components (`api-server` always) and wait until each reports healthy."""
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        for name in ("api-server", *components):
            args = ["airflow", name] + (
                ["--port", self.env["AIRFLOW__API__PORT"]] if name == "api-server" else []
            )
            self.services.append(Service(name, args, self.env, logs / f"{name}.log").start())
        wanted = {name.replace("-", "_") for name in components}

        def health():
            exited = {s.name: s.exited() for s in self.services if s.exited() is not None}
            if exited:
                pytest.fail(f"Airflow components exited: {exited}\n{self.report()}")
            body = requests.get(f"{self.url}/api/v2/monitor/health", timeout=HTTP_TIMEOUT_S).json()
            return {name: (body.get(name) or {}).get("status") for name in wanted | {"metadatabase"}}

        wait_until(
            "Airflow components healthy",
            health,
            START_TIMEOUT_S,
            done=lambda states: set(states.values()) == {"healthy"},
            every_s=2,
            report=self.report,
        )

    def report(self) -> str:
        """Where the logs are and how each component's log ends: for a failure message."""
        return f"Airflow home {self.home}\n" + "\n".join(s.log_tail(15) for s in self.services)

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def wait_for_run(airflow: Airflow, dag_id: str, run_id: str, budget: Budget, every_s: float = 10) -> dict:
    """Wait until the run is final; the limit is what Airflow allows its tasks, within the budget."""
    api = airflow.api
    limit = budget.limit(api.execution_timeout_s(dag_id))
    started = time.monotonic()
    found = wait_until(
        f"{dag_id} run {run_id} final",
        lambda: api.run(dag_id, run_id) or {},
        limit,
        done=lambda run: run.get("state") in FINAL,
        every_s=every_s,
        report=lambda: f"tasks: {api.task_states(dag_id, run_id)}\n{airflow.report()}",
    )
    note(f"{dag_id} {run_id}: {found['state']} (waited {time.monotonic() - started:.0f}s)")
    return found
