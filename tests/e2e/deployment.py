"""A real Airflow 3 deployment on loopback: PostgreSQL databases, ``airflow db migrate``, the
api-server, scheduler, dag-processor and triggerer, with the LocalExecutor or the
CeleryExecutor (Redis broker, two workers)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.e2e.airflow_api import AirflowApi
from tests.e2e.processes import ROOT, Processes, free_port
from tests.e2e.simulators import Simulators

DAGS_FOLDER = ROOT / "tests" / "e2e" / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
#: Slots: the fan-out's 6 mapped tasks run at once (the issue asks for at least 4).
PARALLELISM = 8
CELERY_WORKERS = 2
CELERY_CONCURRENCY = 4


def recreate_databases(postgres_url: str, names: list[str]) -> dict[str, str]:
    """Fresh databases on the cluster of ``postgres_url``; name -> SQLAlchemy URL."""
    import psycopg2

    parts = urlsplit(postgres_url)
    connection = psycopg2.connect(
        host=parts.hostname, port=parts.port, user=parts.username or "postgres", dbname="postgres"
    )
    connection.autocommit = True
    with connection.cursor() as cursor:
        for name in names:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    base = f"postgresql+psycopg2://{parts.username or 'postgres'}@{parts.hostname}:{parts.port}"
    return {name: f"{base}/{name}" for name in names}


class Deployment:
    """Everything started for one e2e run; ``processes`` stops it all."""

    def __init__(self, executor: str, postgres_url: str, workdir: Path, processes: Processes) -> None:
        self.executor = executor
        self.postgres_url = postgres_url
        self.workdir = workdir
        self.processes = processes
        self.home = workdir / "airflow"
        self.api_port = free_port()
        self.api = AirflowApi(f"http://127.0.0.1:{self.api_port}")
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def _timed(self, name: str, started: float) -> None:
        self.timings[name] = round(time.perf_counter() - started, 1)
        print(f"   {name}: {self.timings[name]:.1f} s", flush=True)

    def airflow_env(self, sims: Simulators, config_path: Path) -> dict[str, str]:
        databases = recreate_databases(self.postgres_url, ["e2e_airflow", "e2e_state"])
        state = urlsplit(databases["e2e_state"])
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if self.executor == "celery" else "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__CORE__FERNET_KEY": "",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": databases["e2e_airflow"],
                # Every process signs and checks the tasks' tokens with the same secret.
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API__WORKERS": "1",
                # Should a log server start after all, no fixed port: other Airflows may run here.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "SEQUENCES_E2E_CONFIG": str(config_path),
                "AIRFLOW_CONN_E2E_STATE": json.dumps(
                    {
                        "conn_type": "postgres",
                        "host": state.hostname,
                        "port": state.port,
                        "login": state.username,
                        "schema": state.path.lstrip("/"),
                    }
                ),
                **sims.connections,
            }
        )
        if self.executor == "celery":
            redis_port = free_port()
            env["AIRFLOW__CELERY__BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + databases["e2e_airflow"].replace("+psycopg2", "")
            env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = str(CELERY_CONCURRENCY)
            env["E2E_REDIS_PORT"] = str(redis_port)
        self.env = env
        return env

    def start(self, sims: Simulators, config_path: Path) -> None:
        if self.home.exists():
            shutil.rmtree(self.home)
        self.home.mkdir(parents=True)
        env = self.airflow_env(sims, config_path)
        started = time.perf_counter()
        migrate = subprocess.run(
            [AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600, check=False
        )
        self.processes.log("db-migrate").write_text(migrate.stdout + migrate.stderr)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
        self._timed("airflow db migrate (PostgreSQL)", started)
        started = time.perf_counter()
        if self.executor == "celery":
            redis = shutil.which("redis-server")
            if redis is None:
                raise RuntimeError("redis-server is not installed (scripts/e2e.sh installs it)")
            self.processes.start(
                "redis",
                [
                    redis,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    env["E2E_REDIS_PORT"],
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                env,
            )
        self.processes.start(
            "api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)], env
        )
        # Every process shares this machine's logs folder, so no log server is needed (it would
        # listen on every interface, not only loopback).
        self.processes.start("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"], env)
        self.processes.start("dag-processor", [AIRFLOW, "dag-processor"], env)
        self.processes.start("triggerer", [AIRFLOW, "triggerer", "--skip-serve-logs"], env)
        if self.executor == "celery":
            for n in range(1, CELERY_WORKERS + 1):
                self.processes.start(
                    f"celery-worker-{n}",
                    [
                        AIRFLOW,
                        "celery",
                        "worker",
                        "--celery-hostname",
                        f"e2e-worker-{n}@%h",
                        "--concurrency",
                        str(CELERY_CONCURRENCY),
                        "--pid",
                        str(self.workdir / f"celery-worker-{n}.pid"),
                        "--skip-serve-logs",
                    ],
                    env,
                )
        self.wait_ready()
        self._timed("Airflow processes up and DAGs parsed", started)

    def wait_ready(self, timeout: float = 300) -> None:
        """Until the api-server answers, every component is healthy and both DAGs are parsed."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.processes.check_alive()
            try:
                if "Authorization" not in self.api.session.headers:
                    self.api.login()
                health = self.api.health()
                last = health
                healthy = all(
                    health.get(part, {}).get("status") == "healthy"
                    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor")
                )
                if healthy and self.api.has_dag("e2e_fanout") and self.api.has_dag("e2e_overlap"):
                    return
                errors = self.api.import_errors()
                if errors:
                    raise RuntimeError(f"the e2e DAGs failed to import: {errors}")
            except OSError as error:  # requests' connection errors; the server is starting
                last = error
            time.sleep(2)
        raise TimeoutError(f"the deployment was not ready after {timeout:.0f} s; last: {last}")

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, *, trigger: bool = False
    ) -> str:
        """Every attempt's log of one task instance, from the shared logs folder; with
        ``trigger``, what the triggerer logged for it instead (``attempt=N.log.trigger.<job>.log``)."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        pattern = "attempt=*.log.trigger.*.log" if trigger else "attempt=*.log"
        return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob(pattern)))
