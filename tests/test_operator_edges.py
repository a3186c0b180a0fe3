"""What a real deployment runs into: outlets of mapped and templated sequence ids, Reply rows
carrying only contact ids, and a request count that matches what the service counted.

Real DAG runs (``dag.test()``) against the Reply simulator over real HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator
from airflow_provider_sequences.operators.whippy import WhippyAddContactsToSequenceOperator
from airflow_provider_sequences.testing import ReplyAccount, ReplySimulator, connection_env_var
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_states, task_xcom
from tests.dag_files import REPLY_OPERATOR, write_operator_dag

pytestmark = pytest.mark.usefixtures("reply_connection")

STATE_CONN = "sync_state"


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        connection_env_var(STATE_CONN),
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "state.db")}),
    )


def asset_uris(dag_run: Any) -> list[str]:
    """The Asset events this run emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == dag_run.dag_id, AssetEvent.source_run_id == dag_run.run_id
            )
        ).all()
        return sorted(event.asset.uri for event in events)


def test_a_mapped_task_emits_its_sequence_asset(reply_account: ReplyAccount, dags_folder: Path) -> None:
    sequence = reply_account.sequence_id
    write_operator_dag(
        dags_folder,
        "mapped_outlets",
        REPLY_OPERATOR,
        sequence_id=sequence,
        column_map={"email": "email"},
        first_name_fallback="there",
        state_conn_id=STATE_CONN,
        expand_contacts=[[{"email": "ada@example.com"}], [{"email": "grace@example.com"}]],
    )
    dag_run = run_dag(load_dag("mapped_outlets", dags_folder))
    assert task_states(dag_run) == {"enrol[0]": "success", "enrol[1]": "success"}
    # One event per shard, both for the sequence: consumers scheduled on it run.
    assert asset_uris(dag_run) == [f"reply://sequences/{sequence}"] * 2


def test_a_templated_sequence_id_emits_the_asset_it_resolved(
    reply_account: ReplyAccount, dags_folder: Path
) -> None:
    sequence = reply_account.sequence_id
    write_operator_dag(
        dags_folder,
        "templated_outlets",
        REPLY_OPERATOR,
        params={"sequence_id": sequence},
        sequence_id="{{ params.sequence_id }}",
        column_map={"email": "email"},
        first_name_fallback="there",
        state_conn_id=STATE_CONN,
        upstream_rows=[{"email": "ada@example.com"}],
    )
    dag_run = run_dag(load_dag("templated_outlets", dags_folder))
    assert task_states(dag_run)["enrol"] == "success"
    assert asset_uris(dag_run) == [f"reply://sequences/{sequence}"]


def test_a_dry_run_emits_no_asset(reply_account: ReplyAccount, dags_folder: Path) -> None:
    write_operator_dag(
        dags_folder,
        "dry_outlets",
        REPLY_OPERATOR,
        params={"sequence_id": reply_account.sequence_id},
        sequence_id="{{ params.sequence_id }}",
        column_map={"email": "email"},
        first_name_fallback="there",
        state_conn_id=STATE_CONN,
        dry_run=True,
        upstream_rows=[{"email": "ada@example.com"}],
    )
    dag_run = run_dag(load_dag("dry_outlets", dags_folder))
    assert task_states(dag_run)["enrol"] == "success"
    assert asset_uris(dag_run) == []


def test_outlets_declared_at_parse_time() -> None:
    from airflow.sdk import Asset, AssetAlias

    literal = ReplyAddContactsToSequenceOperator(
        task_id="a", sequence_id=7, contacts=[], column_map={"e": "email"}
    )
    templated = WhippyAddContactsToSequenceOperator(
        task_id="b", sequence_id="{{ params.s }}", contacts=[], column_map={"p": "phone"}
    )
    assert literal.outlets == [Asset(uri="reply://sequences/7", name="reply-sequence-7")]
    assert templated.outlets == [AssetAlias(name="whippy-sequences")]


def test_contact_ids_need_no_column_map(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount, dags_folder: Path
) -> None:
    ids = [
        reply_simulator.add_contact(f"p{i}@example.com", owner_user_id=reply_account.user_id)
        for i in range(3)
    ]
    write_operator_dag(
        dags_folder,
        "ids_only",
        REPLY_OPERATOR,
        sequence_id=reply_account.sequence_id,
        contact_id_column="reply_id",
        key_column="crm_id",
        state_conn_id=STATE_CONN,
        upstream_rows=[{"crm_id": f"crm-{i}", "reply_id": contact} for i, contact in enumerate(ids)],
    )
    dag_run = run_dag(load_dag("ids_only", dags_folder))
    assert task_states(dag_run)["enrol"] == "success"
    assert sorted(task_xcom(dag_run, "enrol")["added"]) == ["crm-0", "crm-1", "crm-2"]
    enrolled = {c for (seq, c) in reply_simulator.enrolments if seq == reply_account.sequence_id}
    assert enrolled == set(ids)


def test_column_map_is_still_required_without_contact_ids() -> None:
    with pytest.raises(ValueError, match="column_map is required"):
        ReplyAddContactsToSequenceOperator(task_id="a", sequence_id=7, contacts=[])
    with pytest.raises(ValueError, match="column_map is required"):
        WhippyAddContactsToSequenceOperator(task_id="b", sequence_id="s", contacts=[])


def test_requests_counts_every_request_the_service_saw(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount, dags_folder: Path
) -> None:
    write_operator_dag(
        dags_folder,
        "request_count",
        REPLY_OPERATOR,
        sequence_id=reply_account.sequence_id,
        column_map={"email": "email"},
        first_name_fallback="there",
        state_conn_id=STATE_CONN,
        upstream_rows=[{"email": f"p{i}@example.com"} for i in range(5)],
    )
    before = len(reply_simulator.requests)
    dag_run = run_dag(load_dag("request_count", dags_folder))
    stats = task_xcom(dag_run, "enrol")["stats"]
    seen = reply_simulator.requests[before:]
    writes = [r for r in seen if r.method != "GET"]
    # The preflight read of the sequence counts too: the service counts it against the budget.
    assert stats["requests"] == len(seen) > len(writes)
    assert stats["write_requests"] == len(writes) == 2
