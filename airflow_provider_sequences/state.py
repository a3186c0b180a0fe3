"""Reach the sync state from Airflow: the table behind incremental syncs, for people to read.

The state is a plain SQL table, ``sequence_sync_state``, one row per (service, account,
sequence, key) with the key's last outcome. Query it with any SQL tool, or::

    from airflow_provider_sequences.state import read_sync_state

    frame = read_sync_state(service="reply", sequence_id="1001")
    frame[frame.status == "not_processed"].groupby("reason").size()
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

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
