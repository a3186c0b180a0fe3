"""The deployment's REST API (``/api/v2``), as much of it as the e2e checks need."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests

FINISHED = {"success", "failed"}


class AirflowApi:
    """A client of the api-server; the simple auth manager's all-admins mode gives the token."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def login(self) -> None:
        answer = self.session.get(f"{self.base_url}/auth/token", timeout=30)
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def get(self, path: str, **params: str | int) -> Any:
        answer = self.session.get(f"{self.base_url}/api/v2{path}", params=params, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def health(self) -> dict[str, Any]:
        answer = self.session.get(f"{self.base_url}/api/v2/monitor/health", timeout=10)
        answer.raise_for_status()
        health: dict[str, Any] = answer.json()
        return health

    def import_errors(self) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = self.get("/importErrors")["import_errors"]
        return errors

    def has_dag(self, dag_id: str) -> bool:
        answer = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=30)
        if answer.status_code == 404:
            return False
        answer.raise_for_status()
        return True

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        answer = self.session.post(
            f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": conf or {}},
            timeout=30,
        )
        answer.raise_for_status()
        run_id: str = answer.json()["dag_run_id"]
        return run_id

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.get(f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")
        return run

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        instances: list[dict[str, Any]] = self.get(
            f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", limit=100
        )["task_instances"]
        return instances

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        """A task's return value, or ``None`` when it pushed none."""
        answer = self.session.get(
            f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/xcomEntries/return_value",
            params={"map_index": str(map_index), "deserialize": "true"},
            timeout=30,
        )
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.json()["value"]


def label(instance: dict[str, Any]) -> str:
    """``task_id`` or ``task_id[map_index]``."""
    index = instance.get("map_index", -1)
    return instance["task_id"] if index is None or index < 0 else f"{instance['task_id']}[{index}]"


class RunWatcher:
    """Polls runs until they finish, remembering every state each task instance was seen in
    (a deferral shows as ``deferred`` while the trigger waits)."""

    def __init__(self, api: AirflowApi, dag_id: str, run_ids: list[str]) -> None:
        self.api = api
        self.dag_id = dag_id
        self.run_ids = run_ids
        self.seen: dict[tuple[str, str], list[str]] = {}
        self.runs: dict[str, dict[str, Any]] = {}

    def poll(self) -> bool:
        """One round; ``True`` when every run has finished."""
        done = True
        for run_id in self.run_ids:
            run = self.api.run(self.dag_id, run_id)
            self.runs[run_id] = run
            for instance in self.api.task_instances(self.dag_id, run_id):
                states = self.seen.setdefault((run_id, label(instance)), [])
                state = str(instance.get("state"))
                if not states or states[-1] != state:
                    states.append(state)
            done = done and run["state"] in FINISHED
        return done

    def wait(self, timeout: float, interval: float = 1.0, on_tick: Any = None) -> None:
        deadline = time.monotonic() + timeout
        while not self.poll():
            if on_tick is not None:
                on_tick()
            if time.monotonic() > deadline:
                states = {f"{r}:{t}": s[-1] for (r, t), s in self.seen.items()}
                raise TimeoutError(f"{self.dag_id}: runs not finished after {timeout:.0f} s: {states}")
            time.sleep(interval)
