"""Test session set-up: an isolated AIRFLOW_HOME before anything imports Airflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_home = tempfile.mkdtemp(prefix="airflow-home-")
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
    return folder
