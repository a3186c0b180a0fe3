"""OpenLineage: a sync's COMPLETE event names the table it read, the sequence it wrote, the
column lineage of ``column_map`` and the rows added.

The apache-airflow-providers-openlineage listener runs for real, in ``airflow dags test`` (its
own process: the transport is configuration read at start-up), with the file transport; the
test reads the events it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_sequences.testing import ReplyAccount, WhippyAccount, connection_env_var
from airflow_provider_sequences.testing.crm import write_crm_sqlite
from tests.dag_files import REPLY_OPERATOR, WHIPPY_OPERATOR, write_operator_dag

pytest.importorskip("airflow.providers.openlineage")

SQL = "SELECT crm_id, email, first_name, phone FROM crm_contacts WHERE crm_id <> 'x'"


def run_with_lineage(dag_id: str, events: Path) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "tests",
    }
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run(
        [str(airflow), "dags", "test", dag_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    lines = events.read_text().splitlines() if events.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def complete_event(events: list[dict[str, Any]], task_id: str) -> dict[str, Any]:
    found = [
        e for e in events if e.get("eventType") == "COMPLETE" and e["job"]["name"].endswith(f".{task_id}")
    ]
    assert found, [(e.get("eventType"), e.get("job", {}).get("name")) for e in events]
    return found[-1]


@pytest.fixture
def crm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    frame = pd.DataFrame(
        {
            "crm_id": [f"crm-{i}" for i in range(5)],
            "email": [f"p{i}@example.com" for i in range(5)],
            "first_name": [f"P{i}" for i in range(5)],
            "phone": [f"+1 415 555 {1000 + i}" for i in range(5)],
        }
    )
    database = write_crm_sqlite(tmp_path / "crm.db", frame)
    monkeypatch.setenv(
        connection_env_var("crm_export"), json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    monkeypatch.setenv(
        connection_env_var("sync_state"),
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
    )
    return database


def test_a_reply_sync_from_sql_emits_its_lineage(
    reply_connection: str, reply_account: ReplyAccount, dags_folder: Path, crm: Path, tmp_path: Path
) -> None:
    write_operator_dag(
        dags_folder,
        "lineage_reply",
        REPLY_OPERATOR,
        sequence_id=reply_account.sequence_id,
        sql=SQL,
        source_conn_id="crm_export",
        key_column="crm_id",
        column_map={"email": "email", "first_name": "firstName"},
        state_conn_id="sync_state",
    )
    event = complete_event(run_with_lineage("lineage_reply", tmp_path / "events.jsonl"), "enrol")

    source_namespace = f"sqlite://{crm}"
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [(source_namespace, "crm_contacts")]
    [output] = event["outputs"]
    host = reply_connection_host(reply_account, event)
    assert (output["namespace"], output["name"]) == (
        f"reply://{host}",
        f"user-{reply_account.user_id}/sequences/{reply_account.sequence_id}",
    )
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 5
    fields = output["facets"]["columnLineage"]["fields"]
    assert {
        target: [(f["namespace"], f["name"], f["field"]) for f in v["inputFields"]]
        for target, v in fields.items()
    } == {
        "email": [(source_namespace, "crm_contacts", "email")],
        "firstName": [(source_namespace, "crm_contacts", "first_name")],
    }
    assert "crm_contacts" in event["job"]["facets"]["sql"]["query"]


def reply_connection_host(reply_account: ReplyAccount, event: dict[str, Any]) -> str:
    from urllib.parse import urlsplit

    url: str = json.loads(os.environ[connection_env_var("reply_default")])["host"]
    return urlsplit(url).netloc


def test_a_whippy_sync_from_a_file_emits_its_lineage(
    whippy_connection: str, whippy_account: WhippyAccount, dags_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    source = tmp_path / "leads.csv"
    pd.DataFrame({"crm_id": ["a1", "a2"], "phone": ["+14155550101", "+14155550102"]}).to_csv(
        source, index=False
    )
    monkeypatch.setenv(
        connection_env_var("sync_state"),
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
    )
    write_operator_dag(
        dags_folder,
        "lineage_whippy",
        WHIPPY_OPERATOR,
        sequence_id=whippy_account.sequence_id,
        source_path=str(source),
        column_map={"crm_id": "external_id", "phone": "phone"},
        state_conn_id="sync_state",
        poll_interval=0.2,
        enrollment_timeout=5,
    )
    event = complete_event(run_with_lineage("lineage_whippy", tmp_path / "events.jsonl"), "enrol")
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [("file", str(source))]
    [output] = event["outputs"]
    assert output["namespace"].startswith("whippy://127.0.0.1:")
    # Without an organization_id extra Whippy's account is a keyed hash, never the key itself.
    assert output["name"].endswith(f"/sequences/{whippy_account.sequence_id}")
    assert whippy_account.api_key not in output["name"]
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 2
    assert set(output["facets"]["columnLineage"]["fields"]) == {"external_id", "phone"}
