"""The sync state as people read it: one row per key, batches in flight shown as ``sending``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd
import sqlalchemy as sa

from airflow_provider_sequences.sync.schema import ensure_current
from airflow_provider_sequences.sync.state.tables import in_flight_table, state_table
from airflow_provider_sequences.sync.values import SENDING


def read_state(
    engine: sa.Engine,
    *,
    service: str | None = None,
    account: str | None = None,
    sequence_id: str | None = None,
) -> pd.DataFrame:
    """Rows of the state table as a DataFrame, optionally of one service, account or sequence.

    Timestamps are UTC-aware on every database (SQLite hands them back naive).
    """
    ensure_current(engine)
    scope = {"service": service, "account": account, "sequence_id": sequence_id}

    def rows_of(table: sa.Table) -> sa.Select[Any]:
        query = sa.select(table)
        for name, value in scope.items():
            if value is not None:
                query = query.where(table.c[name] == str(value))
        return query

    query = rows_of(state_table).order_by(state_table.c.sequence_id, state_table.c.contact_key)
    flying = rows_of(in_flight_table)
    with engine.connect() as connection:
        frame = pd.read_sql(query, connection)
        batches = connection.execute(flying).all()
    for name in ("created_at", "updated_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True).dt.as_unit("us")
    if batches:
        frame = _with_in_flight(frame, batches)
    return frame


def _with_in_flight(frame: pd.DataFrame, batches: Sequence[Any]) -> pd.DataFrame:
    """The state as people read it: keys of batches in flight show as ``sending``, with the
    send counted in their attempts."""
    scope = ["service", "account", "sequence_id", "contact_key"]
    flying = pd.DataFrame(
        [
            (b.service, b.account, b.sequence_id, key, b.run_id, b.created_at)
            for b in batches
            for key in json.loads(b.contact_keys)
        ],
        columns=[*scope, "run_id", "sent_at"],
    ).drop_duplicates(scope, keep="last")
    flying["sent_at"] = pd.to_datetime(flying["sent_at"], utc=True).dt.as_unit("us")
    merged = frame.merge(flying, on=scope, how="outer", indicator=True)
    sending = merged["_merge"] != "left_only"
    new = merged["_merge"] == "right_only"
    merged.loc[sending, "status"] = SENDING
    attempts = pd.to_numeric(merged["attempts"], errors="coerce").fillna(0).astype("int64")
    merged["attempts"] = attempts + sending.astype("int64")
    for name in ("first_run_id", "last_run_id"):
        merged.loc[new, name] = merged.loc[new, "run_id"]
    merged.loc[sending, "last_run_id"] = merged.loc[sending, "run_id"]
    for name in ("created_at", "updated_at"):
        merged.loc[new, name] = merged.loc[new, "sent_at"]
    merged.loc[sending, "updated_at"] = merged.loc[sending, "sent_at"]
    merged = merged.drop(columns=["run_id", "sent_at", "_merge"])
    return merged.sort_values(["sequence_id", "contact_key"], ignore_index=True)
