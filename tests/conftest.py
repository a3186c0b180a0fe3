"""Test session set-up: an isolated AIRFLOW_HOME before anything imports Airflow."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_home = tempfile.mkdtemp(prefix="airflow-home-")
# Every test session makes one: removed when it ends, or /tmp fills up with them.
atexit.register(shutil.rmtree, _home, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _home
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DAGS = REPO / "dags_examples"


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) in the session's AIRFLOW_HOME."""
    from airflow_provider_sequences.testing.dags import prepare_airflow_home

    prepare_airflow_home(_home, EXAMPLE_DAGS)
    return Path(_home)


@pytest.fixture
def dags_folder(airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DAGs folder for this test; ``dag.test()`` runs only DAGs from the DAGs folder."""
    folder = tmp_path / "dags"
    folder.mkdir()
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    # Airflow also keeps the folder it read at start-up in airflow.settings.
    import airflow.settings

    monkeypatch.setattr(airflow.settings, "DAGS_FOLDER", str(folder))
    return folder


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL on loopback, started once per session by
    ``scripts/postgres.sh`` (which installs PostgreSQL first on a machine without it), and
    stopped when the session ends if the session started it (one already running is left alone).
    ``SEQUENCES_PG_DATA`` names its data directory (default ``.pg``).

    When the script fails, tests that need PostgreSQL fail under CI (``CI`` set) and are
    skipped elsewhere, with the script's output either way.
    """
    script = REPO / "scripts" / "postgres.sh"
    data = os.environ.get("SEQUENCES_PG_DATA", str(REPO / ".pg"))
    # pytest-xdist's workers (make test runs several) each start their own cluster, on a port
    # of their own, so none stops the one another still uses.
    env = dict(os.environ)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker:
        data = f"{data}-{worker}"
        # Below Linux's ephemeral ports (32768-60999): a client socket of another test may
        # hold any port in that range at the moment the server binds (CI once lost 55430 so).
        env.setdefault("PGPORT", str(31430 + int(worker.removeprefix("gw"))))
    started = False
    try:
        # apt-get may run on a fresh machine: give it time, within pytest-timeout's 300 s.
        done = subprocess.run(
            ["bash", str(script), "start", data],
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        started = "starting the server" in done.stderr
        lines = done.stdout.strip().splitlines()
        url = lines[-1] if lines else ""
        failure = (
            ""
            if done.returncode == 0 and url.startswith("postgresql://")
            else f"exit status {done.returncode}\n{done.stdout}{done.stderr}"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure, url = f"bash {script}: {exc}", ""
    if failure:
        message = f"scripts/postgres.sh could not start PostgreSQL: {failure.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield url
    if started:
        subprocess.run(
            ["bash", str(script), "stop", data], env=env, capture_output=True, timeout=120, check=False
        )
