"""Reach the sync state from Airflow: the table behind incremental syncs, for people to read.

The state is a plain SQL table, ``sequence_sync_state``, one row per (service, account,
sequence, key) with the key's last outcome. Query it with any SQL tool, or::

    from airflow_provider_sequences.sync_state import read_sync_state

    frame = read_sync_state(service="reply", sequence_id="1001")
    frame[frame.status == "not_processed"].groupby("reason").size()

The schema has a version and migrations: a sync upgrades its state before reading it. To see or
do it yourself (back the state up first)::

    python -m airflow_provider_sequences.sync_state current [--state-conn-id ID | --url URL]
    python -m airflow_provider_sequences.sync_state upgrade [--state-conn-id ID | --url URL]
    python -m airflow_provider_sequences.sync_state history
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from airflow_provider_sequences.sync import schema
from airflow_provider_sequences.sync.state import create_state_engine, default_state_url, read_state


def state_engine(state_conn_id: str | None = None) -> sa.Engine:
    """The state database: an Airflow connection's (SQLite or PostgreSQL), else the embedded
    SQLite file ``sequence_sync_state.db`` under ``AIRFLOW_HOME``."""
    if state_conn_id:
        from airflow.sdk import BaseHook

        hook = BaseHook.get_connection(state_conn_id).get_hook()
        engine: sa.Engine = hook.get_sqlalchemy_engine()
        return engine
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return create_state_engine(default_state_url(home))


def read_sync_state(
    *,
    service: str | None = None,
    sequence_id: str | int | None = None,
    connection_id: str | None = None,
    account: str | None = None,
    state_conn_id: str | None = None,
) -> pd.DataFrame:
    """The sync state as a DataFrame: who was enrolled when, and who failed why.

    :param service: ``"reply"`` or ``"whippy"``; all when ``None``.
    :param sequence_id: one sequence; all when ``None``.
    :param connection_id: a service connection: the state of the account it reaches (which
        any other connection to that account shares).
    :param account: an account as the state names it (``SequencesHook.account``).
    :param state_conn_id: where the state lives (the operators' ``state_conn_id``).
    """
    return read_state(
        state_engine(state_conn_id),
        service=service,
        account=account if connection_id is None else _account_of(connection_id),
        sequence_id=None if sequence_id is None else str(sequence_id),
    )


def _account_of(connection_id: str) -> str:
    """The account a service connection reaches (Reply asks ``whoami``)."""
    from airflow.sdk import BaseHook

    account: str = BaseHook.get_connection(connection_id).get_hook().account
    return account


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m airflow_provider_sequences.sync_state upgrade|current|history``."""
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_sequences.sync_state",
        description="See or upgrade the sync state's schema. Back the state up before an upgrade.",
    )
    parser.add_argument("command", choices=["upgrade", "current", "history"])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state-conn-id", help="the Airflow connection of the state (the operators' state_conn_id)"
    )
    where.add_argument("--url", help="a SQLAlchemy URL of the state database instead of a connection")
    args = parser.parse_args(argv)
    if args.command == "history":
        for known in schema.history():
            print(f"{known.revision}  {known.message}")
        return 0
    engine = create_state_engine(args.url) if args.url else state_engine(args.state_conn_id)
    where_text = engine.url.render_as_string(hide_password=True)
    try:
        if args.command == "current":
            with engine.connect() as connection:
                revision, by = schema.current(connection), schema.written_by(connection)
            head = schema.head()
            revisions = {r.revision for r in schema.history()}
            if revision == head:
                status = "up to date"
            elif revision is not None and revision not in revisions:
                status = f"newer than this provider (it knows up to {head}): upgrade the provider"
            else:
                status = f"behind: the next sync, or 'upgrade', brings it to {head}"
            shown = revision or "none (empty, or written by provider 0.1.0)"
            print(f"{where_text}: revision {shown}" + (f", upgraded by provider {by}" if by else ""))
            print(status)
            return 0
        before, after = schema.upgrade(engine)
        print(
            f"{where_text}: "
            + (f"upgraded {before or 'none'} -> {after}" if before != after else f"already at {after}")
        )
        return 0
    except schema.StateSchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
