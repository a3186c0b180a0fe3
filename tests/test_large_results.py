"""A large result reaches a downstream task through Airflow's object-storage XCom backend.

The result of a big night (every added key) is tens of MB at a million rows: with
``XComObjectStorageBackend`` it is written to object storage (here a local ``file://`` path)
and the metadata database keeps only its path. The run is ``airflow dags test`` in its own
process, since Airflow reads its XCom backend once, at start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from airflow_provider_sequences.testing import (
    ReplyAccount,
    ReplySimulator,
    connection_env_var,
    connection_json,
)
from airflow_provider_sequences.testing.dags import task_xcom

ROWS = 50_000
DAG_ID = "large_result"


def write_dag(folder: Path, source: Path, sequence_id: int) -> None:
    text = f"""
from datetime import datetime

from airflow.sdk import DAG, task

from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator

with DAG(dag_id={DAG_ID!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    enrol = ReplyAddContactsToSequenceOperator(
        task_id="enrol",
        sequence_id={sequence_id!r},
        source_path={str(source)!r},
        key_column="crm_id",
        column_map={{"email": "email"}},
        first_name_fallback="there",
        state_conn_id="sync_state",
    )

    @task
    def downstream(result):
        return {{"added": len(result["added"]), "last": sorted(result["added"])[-1]}}

    downstream(enrol.output)
"""
    (folder / f"{DAG_ID}.py").write_text(text)


def test_the_result_is_handed_to_xcom_without_a_copy_of_its_keys() -> None:
    from airflow_provider_sequences.sync.outcomes import SyncResult

    result = SyncResult()
    for i in range(200_000):
        result.add(f"crm-{i:07d}")
    for i in range(50_000):
        result.reject(f"bad-{i}", "invalidEmail", "detail")
    tracemalloc.start()
    try:
        value = result.to_xcom()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert value["stats"]["added"] == 200_000
    # A copy of the keys' list and dict would be a few MB; the stats are a few hundred bytes.
    assert peak < 100_000, peak


@pytest.mark.timeout(600)
@pytest.mark.reply_simulator(enforce_rate_limits=False)
def test_a_large_result_goes_downstream_through_object_storage(
    reply_simulator: ReplySimulator,
    reply_account: ReplyAccount,
    dags_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "export.csv"
    pd.DataFrame(
        {"crm_id": [f"crm-{i:06d}" for i in range(ROWS)], "email": [f"p{i}@example.com" for i in range(ROWS)]}
    ).to_csv(source, index=False)
    write_dag(dags_folder, source, reply_account.sequence_id)
    store = tmp_path / "xcom"
    store.mkdir()
    # The simulator does not limit this test's rate: the client need not either.
    monkeypatch.setenv(
        connection_env_var("reply_default"),
        connection_json(
            "reply",
            reply_simulator.url,
            reply_account.api_key,
            requests_per_minute=1_000_000,
            requests_per_hour=1_000_000,
        ),
    )
    monkeypatch.setenv(
        connection_env_var("sync_state"),
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
    )
    env = {
        **os.environ,
        "AIRFLOW__CORE__XCOM_BACKEND": "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH": f"file://{store}",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD": "65536",
        "AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_COMPRESSION": "gzip",
    }
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run(
        [str(airflow), "dags", "test", DAG_ID],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    # Downstream read the whole result: every key added.
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        dag_run = session.query(DagRun).filter(DagRun.dag_id == DAG_ID).one()
    assert task_xcom(dag_run, "downstream") == {"added": ROWS, "last": f"crm-{ROWS - 1:06d}"}
    # The metadata database holds only where the result is: the result is in the store.
    stored = task_xcom(dag_run, "enrol")
    assert isinstance(stored, str)
    assert stored.startswith(f"file://{store}") or stored.startswith(str(store)), stored[:200]
    files = [path for path in store.rglob("*") if path.is_file()]
    assert len(files) == 1
    assert files[0].stat().st_size > 65_536 // 4  # gzip: about 5 bytes a key
