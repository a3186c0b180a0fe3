"""Two nights of a CRM export read from PostgreSQL, with the sync state in PostgreSQL too.

A deployment with several workers keeps both its export and the sync state in a shared
database; this runs the Reply operator through ``dag.test()`` against a real PostgreSQL server
(started by ``scripts/postgres.sh``) and the Reply simulator.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.testing import ReplyAccount, ReplySimulator, connection_env_var
from airflow_provider_sequences.testing.crm import crm_frame
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_states, task_xcom
from tests.dag_files import REPLY_OPERATOR, write_operator_dag


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[tuple[sa.Engine, str]]:
    """A fresh schema for this test, dropped afterwards."""
    engine = sa.create_engine(postgres_url)
    schema = f"nightly_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield engine, schema
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def _pg_connection(url: str) -> str:
    parts = urlsplit(url)
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": parts.hostname,
            "port": parts.port,
            "login": parts.username,
            "schema": parts.path.lstrip("/"),
        }
    )


def test_two_nights_from_postgres_with_state_in_postgres(
    dags_folder: Path,
    postgres_url: str,
    pg_schema: tuple[sa.Engine, str],
    reply_connection: str,
    reply_simulator: ReplySimulator,
    reply_account: ReplyAccount,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, schema = pg_schema
    monkeypatch.setenv(connection_env_var("crm_pg"), _pg_connection(postgres_url))
    # The state table is shared by the database's tests: this run's rows are its account's.
    reply_conn = f"reply_{schema}"
    monkeypatch.setenv(connection_env_var(reply_conn), os.environ[connection_env_var(reply_connection)])
    export = crm_frame(300, seed=5, bad_share=0.0)
    export.to_sql("crm_contacts", engine, schema=schema, index=False)
    write_operator_dag(
        dags_folder,
        "pg_nightly",
        REPLY_OPERATOR,
        sequence_id=reply_account.sequence_id,
        sql=f"SELECT crm_id, email, first_name FROM {schema}.crm_contacts ORDER BY crm_id",  # noqa: S608
        reply_conn_id=reply_conn,
        source_conn_id="crm_pg",
        state_conn_id="crm_pg",
        key_column="crm_id",
        column_map={"email": "email", "first_name": "firstName"},
        chunk_size=100,
    )
    dag = load_dag("pg_nightly", dags_folder)

    def night() -> dict[str, Any]:
        seen = len(reply_simulator.requests)
        run = run_dag(dag)
        assert task_states(run) == {"enrol": "success"}
        result: dict[str, Any] = task_xcom(run, "enrol")
        writes = [r for r in reply_simulator.requests[seen:] if r.method == "POST"]
        assert result["stats"]["write_requests"] == len(writes)
        return result

    first = night()
    assert first["stats"]["added"] == 300
    assert first["stats"]["write_requests"] == 2  # one import, one bulk add

    # Night two: the same export plus 5 new leads; only they are sent.
    crm_frame(5, seed=6, bad_share=0.0, first_id=10_000).to_sql(
        "crm_contacts", engine, schema=schema, index=False, if_exists="append"
    )
    second = night()
    stats = second["stats"]
    assert stats["unchanged"] == 300
    assert sorted(second["added"]) == [f"crm-{i}" for i in range(10_000, 10_005)]
    assert stats["rows"] == stats["added"] + stats["not_processed"] + stats["duplicates"] + stats["unchanged"]
    assert set(reply_simulator.enrolments.values()) == {1}

    # The state is a plain table in PostgreSQL that people can query.
    with engine.connect() as connection:
        counts: dict[str, int] = dict(
            connection.execute(
                sa.text(
                    "SELECT status, count(*) FROM sequence_sync_state"
                    " WHERE account = :account GROUP BY status"
                ),
                {"account": ReplyHook(reply_conn).account},
            ).all()
        )
    assert counts == {"added": 305}
