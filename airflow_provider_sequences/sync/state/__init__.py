"""The sync state: what each key's last outcome was in a sequence, in plain SQL tables.

- :mod:`.tables`: the schema (every change comes with an Alembic revision).
- :mod:`.store`: :class:`SyncState`, which reads and writes one scope, with its parts
  :mod:`.scoped`, :mod:`.in_flight`, :mod:`.leases`, :mod:`.runs` and the row builder :mod:`.rows`.
- :mod:`.read`: the state as people read it (:func:`read_state`).
- :mod:`.database`: the state database's engine and default location.
- :mod:`.null`: the store of a run that writes nothing (a dry run).

The values the state holds are in :mod:`airflow_provider_sequences.sync.values`.
"""

from __future__ import annotations

from airflow_provider_sequences.sync.state.database import create_state_engine, default_state_url
from airflow_provider_sequences.sync.state.read import read_state
from airflow_provider_sequences.sync.state.store import SyncState
from airflow_provider_sequences.sync.state.tables import (
    CLAIMS_TABLE,
    IN_FLIGHT_TABLE,
    LEASES_TABLE,
    RUNS_TABLE,
    STATE_TABLE,
    claims_table,
    in_flight_table,
    leases_table,
    meta_table,
    metadata,
    runs_table,
    state_table,
)
from airflow_provider_sequences.sync.values import (
    ADDED,
    DEFERRED_HOLDER,
    NOT_PROCESSED,
    PENDING,
    SENDING,
    AddedKeys,
    Claims,
    KeyOutcome,
    LeaseRow,
    PendingKeys,
    Scope,
)

__all__ = [
    "ADDED",
    "CLAIMS_TABLE",
    "DEFERRED_HOLDER",
    "IN_FLIGHT_TABLE",
    "LEASES_TABLE",
    "NOT_PROCESSED",
    "PENDING",
    "RUNS_TABLE",
    "SENDING",
    "STATE_TABLE",
    "AddedKeys",
    "Claims",
    "KeyOutcome",
    "LeaseRow",
    "PendingKeys",
    "Scope",
    "SyncState",
    "claims_table",
    "create_state_engine",
    "default_state_url",
    "in_flight_table",
    "leases_table",
    "meta_table",
    "metadata",
    "read_state",
    "runs_table",
    "state_table",
]
