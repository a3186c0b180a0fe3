"""People's emails, phones and names stay out of the task log at every level, and out of the
results and the sync state when ``mask_values`` is on.

The DEBUG test runs a real night (``airflow dags test`` in its own process, so that Airflow
reads the DEBUG level at start-up) against both simulators over real HTTP, and searches every
line it wrote, on its output and in its log files, for any value of the export.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_sequences.sync.masking import mask_text, mask_value
from airflow_provider_sequences.testing import ReplyAccount, WhippyAccount, connection_env_var
from airflow_provider_sequences.testing.crm import write_crm_sqlite
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_states, task_xcom
from tests.dag_files import REPLY_OPERATOR, WHIPPY_OPERATOR, write_operator_dag

CRM_CONN = "crm_export"
STATE_CONN = "sync_state"


def people(count: int) -> pd.DataFrame:
    """An export whose every value is distinctive: found in a log only if a value leaked."""
    rows = [
        {
            "crm_id": f"crm-{i}",
            "email": f"zephyrine.quoxwell{i}@privacy-probe.example",
            "first_name": f"Zephyrine{i}",
            "last_name": f"Quoxwell{i}",
            "phone": f"+1 415 {300 + i:03d} {1000 + i:04d}",
        }
        for i in range(count)
    ]
    # The rejections quote values in their details: they must not reach the log either.
    rows[1]["email"] = "zephyrine.broken@@privacy-probe.example"
    rows[2]["phone"] = "415 call Zephyrine"
    rows[3]["phone"] = "+1 415 55"
    return pd.DataFrame(rows)


def personal_values(frame: pd.DataFrame) -> set[str]:
    values: set[str] = set()
    for column in ("email", "first_name", "last_name", "phone"):
        values.update(str(value) for value in frame[column])
    # Phones also travel in E.164 form, emails lowercased.
    values.update("+" + "".join(ch for ch in str(v) if ch.isdigit()) for v in frame["phone"])
    values.update(str(v).lower() for v in frame["email"])
    return {value for value in values if len(value) >= 6}


@pytest.fixture
def crm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pd.DataFrame:
    frame = people(40)
    database = write_crm_sqlite(tmp_path / "crm.db", frame)
    monkeypatch.setenv(
        connection_env_var(CRM_CONN), json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    monkeypatch.setenv(
        connection_env_var(STATE_CONN),
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
    )
    return frame


SQL = "SELECT crm_id, email, first_name, last_name, phone FROM crm_contacts"


def write_night_dag(folder: Path, dag_id: str, reply: ReplyAccount, whippy: WhippyAccount) -> None:
    """A nightly DAG with both operators reading the export."""
    text = f"""
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator
from airflow_provider_sequences.operators.whippy import WhippyAddContactsToSequenceOperator

with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    ReplyAddContactsToSequenceOperator(
        task_id="reply",
        sequence_id={reply.sequence_id!r},
        sql={SQL!r},
        source_conn_id={CRM_CONN!r},
        key_column="crm_id",
        column_map={{"email": "email", "first_name": "firstName", "last_name": "lastName", "phone": "phone"}},
        default_region="US",
        state_conn_id={STATE_CONN!r},
        max_not_processed_share=None,
        mask_values=True,
    )
    WhippyAddContactsToSequenceOperator(
        task_id="whippy",
        sequence_id={whippy.sequence_id!r},
        sql={SQL!r},
        source_conn_id={CRM_CONN!r},
        key_column="crm_id",
        column_map={{"crm_id": "external_id", "phone": "phone", "email": "email", "first_name": "name"}},
        default_region="US",
        state_conn_id={STATE_CONN!r},
        poll_interval=0.2,
        enrollment_timeout=5,
        max_not_processed_share=None,
        mask_values=True,
    )
"""
    (folder / f"{dag_id}.py").write_text(text)


def test_a_night_at_debug_level_logs_no_email_phone_or_name(
    reply_connection: str,
    whippy_connection: str,
    reply_account: ReplyAccount,
    whippy_account: WhippyAccount,
    dags_folder: Path,
    crm: pd.DataFrame,
) -> None:
    write_night_dag(dags_folder, "privacy_night", reply_account, whippy_account)
    env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"}
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run(
        [str(airflow), "dags", "test", "privacy_night"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # The night did run, at DEBUG, and both tasks did their work.
    assert "DEBUG" in output or "[debug" in output.lower(), output[-2000:]
    assert "Reply.io sequence" in output or "Reply sequence" in output or "added" in output
    logs = [output]
    for path in Path(os.environ["AIRFLOW_HOME"], "logs").rglob("*"):
        if path.is_file() and "privacy_night" in str(path):
            logs.append(path.read_text(errors="replace"))
    text = "\n".join(logs)
    leaked = sorted(value for value in personal_values(crm) if value in text)
    # Airflow's in-process supervisor (dag.test, `airflow dags test`) logs the secrets it is asked
    # to mask; a worker's supervisor omits them. Any other line with a key is ours.
    keyed = [
        line
        for line in text.splitlines()
        if (reply_account.api_key in line or whippy_account.api_key in line) and "MaskSecret(" not in line
    ]
    assert not keyed, keyed[:3]
    lines = [line[:300] for line in text.splitlines() if any(value in line for value in leaked)]
    assert not leaked, f"{len(leaked)} personal values in the log, in:\n" + "\n".join(lines[:10])


def test_mask_values_keeps_values_out_of_results_and_the_state(
    reply_connection: str, reply_account: ReplyAccount, dags_folder: Path, crm: pd.DataFrame, tmp_path: Path
) -> None:
    write_operator_dag(
        dags_folder,
        "masked_night",
        REPLY_OPERATOR,
        sequence_id=reply_account.sequence_id,
        sql=SQL,
        source_conn_id=CRM_CONN,
        key_column="crm_id",
        column_map={"email": "email", "first_name": "firstName", "phone": "phone"},
        default_region="US",
        state_conn_id=STATE_CONN,
        max_not_processed_share=None,
        mask_values=True,
    )
    run = run_dag(load_dag("masked_night", dags_folder))
    assert task_states(run)["enrol"] == "success"
    result = task_xcom(run, "enrol")
    not_processed = result["not_processed"]
    assert not_processed["crm-1"] == {
        "reason": "invalidEmail",
        "detail": "column 'email': 'z•••@privacy-probe.example' is not a valid email: "
        + not_processed["crm-1"]["detail"].split(" is not a valid email: ", 1)[1],
    }
    assert not_processed["crm-2"]["reason"] == "invalidPhone"
    assert (
        not_processed["crm-2"]["detail"]
        == "column 'phone': '4•••' is not a phone number: it contains letters"
    )
    assert not_processed["crm-3"]["detail"].startswith("column 'phone': '+1 ••• 55' ")
    with sqlite3.connect(tmp_path / "state.db") as connection:
        details = [row[0] for row in connection.execute("SELECT detail FROM sequence_sync_state")]
    stored = "\n".join(str(detail) for detail in details)
    shown = json.dumps(not_processed, ensure_ascii=False)
    assert "z•••@privacy-probe.example" in stored
    for value in personal_values(crm):
        assert value not in stored
        assert value not in shown


def test_without_mask_values_details_quote_the_value(
    reply_connection: str, reply_account: ReplyAccount, dags_folder: Path, crm: pd.DataFrame
) -> None:
    kwargs: dict[str, Any] = {
        "sequence_id": reply_account.sequence_id,
        "sql": SQL,
        "source_conn_id": CRM_CONN,
        "key_column": "crm_id",
        "column_map": {"email": "email", "first_name": "firstName"},
        "state_conn_id": STATE_CONN,
        "max_not_processed_share": None,
    }
    write_operator_dag(dags_folder, "plain_night", REPLY_OPERATOR, **kwargs)
    run = run_dag(load_dag("plain_night", dags_folder))
    detail = task_xcom(run, "enrol")["not_processed"]["crm-1"]["detail"]
    assert detail.startswith("'zephyrine.broken@@privacy-probe.example' is not a valid email")


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("ada@example.com", "a•••@example.com"),
        ("+1 415 555 0123", "+1 ••• 0123"),
        ("+44 20 7946 0958", "+44 ••• 0958"),
        ("(415) 555-0123", "••• 0123"),
        ("Ada Lovelace", "A•••"),
        ("", ""),
    ],
)
def test_mask_value(value: str, masked: str) -> None:
    assert mask_value(value) == masked


def test_mask_text_masks_emails_and_phones_but_not_ids_or_counts() -> None:
    text = (
        "its phone +14155550123 is also on source row 1000000, which comes first; "
        "key 'ada@example.com'; step 123e4567-e89b-12d3-a456-426614174000; 4,000 contacts"
    )
    assert mask_text(text) == (
        "its phone +1 ••• 0123 is also on source row 1000000, which comes first; "
        "key 'a•••@example.com'; step 123e4567-e89b-12d3-a456-426614174000; 4,000 contacts"
    )


def test_whippy_mask_values(
    whippy_connection: str,
    whippy_account: WhippyAccount,
    dags_folder: Path,
    crm: pd.DataFrame,
    tmp_path: Path,
) -> None:
    write_operator_dag(
        dags_folder,
        "masked_whippy",
        WHIPPY_OPERATOR,
        sequence_id=whippy_account.sequence_id,
        sql=SQL,
        source_conn_id=CRM_CONN,
        key_column="crm_id",
        column_map={"crm_id": "external_id", "phone": "phone", "email": "email", "first_name": "name"},
        default_region="US",
        state_conn_id=STATE_CONN,
        poll_interval=0.2,
        enrollment_timeout=5,
        max_not_processed_share=None,
        mask_values=True,
    )
    run = run_dag(load_dag("masked_whippy", dags_folder))
    result = task_xcom(run, "enrol")
    shown = json.dumps(result["not_processed"], ensure_ascii=False)
    assert result["not_processed"]["crm-2"]["detail"].startswith("column 'phone': ")
    for value in personal_values(crm):
        assert value not in shown
