"""The sync state survives upgrades: a 0.1.0 state, on SQLite and PostgreSQL, upgrades in place
and its next unchanged night sends nobody; a newer state is refused without a write; workers
that start together upgrade it once.

The 0.1.0 states are checked in (``tests/fixtures/state_0_1_0``, written by provider 0.1.0):
every later schema change adds a revision, and this test must keep passing on them.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_sequences import __version__
from airflow_provider_sequences.adapters.reply import ReplyAdapter
from airflow_provider_sequences.adapters.whippy import WhippyAdapter, WhippyEnrolment
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync import schema
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import records_chunks
from airflow_provider_sequences.sync.state import (
    Scope,
    SyncState,
    create_state_engine,
    metadata,
    read_state,
)
from airflow_provider_sequences.testing import (
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
)
from airflow_provider_sequences.testing.reply import ReplySimulator
from airflow_provider_sequences.testing.whippy import WhippySimulator
from tests.schema_worker import open_state_together
from tests.state_fixture_rows import IN_FLIGHT_KEYS, REPLY_MAP, REPLY_ROWS, WHIPPY_MAP, WHIPPY_ROWS

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "state_0_1_0"
TABLES = ("sequence_sync_state", "sequence_sync_runs", "sequence_sync_in_flight", "sequence_sync_claims")


@pytest.fixture(params=["sqlite", "postgresql"])
def old_state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The URL of a copy of the 0.1.0 state, and the manifest of what it holds."""
    if request.param == "sqlite":
        shutil.copy(FIXTURES / "state.db", tmp_path / "state.db")
        yield f"sqlite:///{tmp_path / 'state.db'}", json.loads((FIXTURES / "manifest.json").read_text())
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql((FIXTURES / "state.sql").read_text())
        engine.dispose()
        yield url, json.loads((FIXTURES / "manifest.postgresql.json").read_text())


class postgres_schema:
    """A schema of its own on the test server, dropped afterwards; the URL works in it."""

    def __init__(self, server: str) -> None:
        self.admin = sa.create_engine(server)
        self.name = f"upgrade_{uuid.uuid4().hex[:12]}"
        self.server = server

    def __enter__(self) -> str:
        with self.admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{self.name}"'))
        return f"{self.server}?options=-csearch_path%3D{self.name}"

    def __exit__(self, *_: object) -> None:
        with self.admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self.admin.dispose()


def table_rows(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the 0.1.0 tables, sorted, as comparable tuples."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for name in TABLES:
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            found = connection.execute(sa.select(table)).all()
            rows[name] = sorted((tuple(str(value) for value in row) for row in found), key=str)
    return rows


def rename_scope(engine: sa.Engine, old: str, new: str) -> None:
    """Point a fixture's sequence at the simulator's (Whippy's ids are random per run)."""
    with engine.begin() as connection:
        for name in TABLES:
            connection.execute(
                sa.text(f"UPDATE {name} SET sequence_id = :new WHERE sequence_id = :old"),  # noqa: S608
                {"new": new, "old": old},
            )


def night(adapter: Any, rows: list[dict[str, Any]], column_map: dict[str, str], state: SyncState) -> Any:
    adapter.preflight()
    spec = PrepareSpec(column_map=column_map, key_column="id", rules=adapter.rules)
    run = SyncRun(adapter, spec, state, "scheduled__2026-12-07T02:00:00+00:00", SyncOptions(batch_size=1000))
    run.run(records_chunks(rows, chunk_size=100))
    run.confirm(timeout=30)
    return run.finish().to_xcom()


def assert_old_reasons(now: dict[str, Any], before: dict[str, Any]) -> None:
    """The same keys not processed, each with its old reason and detail."""
    assert sorted(now) == sorted(before)
    for key, outcome in now.items():
        assert outcome["reason"] == before[key]["reason"]
        assert outcome["detail"].startswith(before[key]["detail"])


def manifest_rows(before: dict[str, list[tuple[Any, ...]]], service: str) -> int:
    """How many state rows of ``service`` the 0.1.0 state held."""
    return sum(1 for row in before["sequence_sync_state"] if row[0] == service)


def writes(sim: Any) -> int:
    return sum(1 for request in sim.requests if request.method == "POST")


def test_a_0_1_0_state_upgrades_and_its_unchanged_night_sends_nobody(
    old_state: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, manifest = old_state
    engine = create_state_engine(url)
    before = table_rows(engine)
    with engine.connect() as connection:
        assert schema.current(connection) is None

    assert schema.upgrade(engine) == (None, schema.head())
    # Nothing in the old tables changed, in flight included.
    assert table_rows(engine) == before
    flying = read_state(engine)
    for service, sequence in manifest["in_flight"].items():
        keys = flying[(flying.service == service) & (flying.sequence_id == sequence)]
        assert sorted(keys.contact_key) == IN_FLIGHT_KEYS
        assert set(keys.status) == {"sending"}

    # Reply: the same export again. Added keys are unchanged, data failures keep their reason.
    old_reply = manifest["reply"]["result"]
    with ReplySimulator() as sim:
        account = seed_reply_account(sim)
        monkeypatch.setenv(
            connection_env_var("reply_default"), connection_json("reply", sim.url, account.api_key)
        )
        rename_scope(engine, manifest["reply"]["sequence_id"], str(account.sequence_id))
        # 0.1.0 kept the state under the connection id: the first run on the account maps it.
        state = SyncState(engine, Scope("reply", ReplyHook().account, str(account.sequence_id)))
        assert state.merge_scope("reply_default") == manifest_rows(before, "reply")
        result = night(ReplyAdapter(ReplyHook(), account.sequence_id), REPLY_ROWS, REPLY_MAP, state)
        assert writes(sim) == 0
    assert result["stats"]["write_requests"] == 0
    assert result["added"] == []
    assert result["stats"]["unchanged"] == len(old_reply["added"]) == 8
    assert_old_reasons(result["not_processed"], old_reply["not_processed"])
    assert result["stats"]["duplicates"] == old_reply["stats"]["duplicates"]

    # Whippy: the keys 0.1.0 left pending are read back (no write) and become added.
    old_whippy = manifest["whippy"]["result"]
    with WhippySimulator() as sim:
        whippy = seed_whippy_account(sim)
        monkeypatch.setenv(
            connection_env_var("whippy_default"), connection_json("whippy", sim.url, whippy.api_key)
        )
        enrolment = WhippyEnrolment(from_channel=whippy.channel_phone)
        # The contacts 0.1.0 sent are in the sequence: replay that night with a throwaway state.
        scratch = create_state_engine(f"sqlite:///{tmp_path / 'scratch.db'}")
        replay = SyncState(scratch, Scope("whippy", "whippy_default", whippy.sequence_id))
        night(
            WhippyAdapter(WhippyHook(), whippy.sequence_id, enrolment=enrolment, poll_interval=0.1),
            WHIPPY_ROWS,
            WHIPPY_MAP,
            replay,
        )
        sim.wait_idle(timeout=30)
        sent_before = writes(sim)

        rename_scope(engine, manifest["whippy"]["sequence_id"], whippy.sequence_id)
        state = SyncState(engine, Scope("whippy", WhippyHook().account, whippy.sequence_id))
        assert state.merge_scope("whippy_default") == manifest_rows(before, "whippy")
        adapter = WhippyAdapter(WhippyHook(), whippy.sequence_id, enrolment=enrolment, poll_interval=0.1)
        result = night(adapter, WHIPPY_ROWS, WHIPPY_MAP, state)
        assert writes(sim) == sent_before
        assert set(sim.enrolments.values()) == {1}
    pending = {
        key for key, o in old_whippy["not_processed"].items() if o["reason"] == "enrollmentUnconfirmed"
    }
    assert len(pending) == 8
    assert result["stats"]["write_requests"] == 0
    assert sorted(result["added"]) == sorted(pending)
    assert_old_reasons(
        result["not_processed"], {k: v for k, v in old_whippy["not_processed"].items() if k not in pending}
    )
    engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_new_state_is_created_at_the_current_revision_and_matches_the_model(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every change to the tables in ``sync/state/tables.py`` needs a migration: this fails otherwise."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def check(url: str) -> None:
        engine = create_state_engine(url)
        SyncState(engine, Scope("reply", "reply_default", "1"))
        with engine.connect() as connection:
            assert schema.current(connection) == schema.head()
            context = MigrationContext.configure(connection, opts={"version_table": schema.VERSION_TABLE})
            assert compare_metadata(context, metadata) == []
        engine.dispose()

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'new.db'}")
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            check(url)


def fingerprint(engine: sa.Engine, path: Path | None) -> str:
    """What a refusal must leave untouched: the SQLite file's bytes, or every row and table."""
    if path is not None:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    with engine.connect() as connection:
        names = sorted(sa.inspect(connection).get_table_names())
        dump = {name: table_rows_of(connection, name) for name in names}
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()


def table_rows_of(connection: sa.Connection, name: str) -> list[str]:
    table = sa.Table(name, sa.MetaData(), autoload_with=connection)
    return sorted(str(tuple(row)) for row in connection.execute(sa.select(table)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_older_provider_refuses_a_newer_state_and_writes_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def check(url: str, path: Path | None) -> None:
        engine = create_state_engine(url)
        SyncState(engine, Scope("reply", "reply_default", "1"))
        with engine.begin() as connection:
            # What a later provider would leave: a revision this one does not know.
            connection.execute(sa.text(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0099'"))  # noqa: S608
            connection.execute(sa.text("UPDATE sequence_sync_meta SET value = '9.1.0'"))
        engine.dispose()
        engine = create_state_engine(url)
        before = fingerprint(engine, path)
        with pytest.raises(schema.StateSchemaError) as refused:
            SyncState(engine, Scope("reply", "reply_default", "1"))
        message = str(refused.value)
        assert "'0099'" in message
        assert "9.1.0" in message
        assert f"airflow-provider-sequences {__version__}" in message
        assert repr(schema.head()) in message
        with pytest.raises(schema.StateSchemaError):
            read_state(engine)
        with pytest.raises(schema.StateSchemaError):
            schema.upgrade(engine)
        engine.dispose()
        assert fingerprint(create_state_engine(url), path) == before

    if backend == "sqlite":
        path = tmp_path / "newer.db"
        check(f"sqlite:///{path}", path)
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            check(url, None)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_that_start_together_upgrade_the_state_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def check(url: str) -> None:
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(4), context.Queue()
        workers = [
            context.Process(target=open_state_together, args=(url, barrier, results)) for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=280)
        assert sorted(results.get(timeout=30) for _ in workers) == ["ok"] * 4
        engine = create_state_engine(url)
        with engine.connect() as connection:
            assert schema.current(connection) == schema.head()
        assert len(read_state(engine)) == 26
        engine.dispose()

    if backend == "sqlite":
        shutil.copy(FIXTURES / "state.db", tmp_path / "state.db")
        check(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            engine = sa.create_engine(url)
            with engine.begin() as connection:
                connection.exec_driver_sql((FIXTURES / "state.sql").read_text())
            engine.dispose()
            check(url)


def state_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_provider_sequences.sync_state", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_the_state_command_shows_history_current_and_upgrades(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "state.db", tmp_path / "state.db")
    url = f"sqlite:///{tmp_path / 'state.db'}"

    history = state_command("history")
    assert history.returncode == 0, history.stderr
    assert [line.split()[0] for line in history.stdout.splitlines()] == [r.revision for r in schema.history()]

    current = state_command("current", "--url", url)
    assert current.returncode == 0, current.stderr
    assert "revision none" in current.stdout
    assert f"behind: the next sync, or 'upgrade', brings it to {schema.head()}" in current.stdout

    upgraded = state_command("upgrade", "--url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded none -> {schema.head()}" in upgraded.stdout
    assert "already at" in state_command("upgrade", "--url", url).stdout

    current = state_command("current", "--url", url)
    assert f"revision {schema.head()}, upgraded by provider {__version__}" in current.stdout
    assert "up to date" in current.stdout

    engine = create_state_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"UPDATE {schema.VERSION_TABLE} SET version_num = '0099'"))  # noqa: S608
    engine.dispose()
    refused = state_command("upgrade", "--url", url)
    assert refused.returncode == 1
    assert "schema revision '0099'" in refused.stderr
    assert "newer than this provider" in state_command("current", "--url", url).stdout
