"""The sync state's tables: the current schema, in one place.

One row per (service, account, sequence, key) in the state table. It is written batch by batch
as the service answers, so a run killed half-way resumes where it stopped, and it is a table
users can query themselves ("who was enrolled when, and who failed why"). SQLAlchemy Core keeps
it portable: the embedded default is SQLite, deployments with several workers use PostgreSQL.

Every change to these tables comes with an Alembic revision in ``migrations/versions`` (see
:mod:`~airflow_provider_sequences.sync.schema`), which brings existing states up to date.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from airflow_provider_sequences.sync.schema import META_TABLE

STATE_TABLE = "sequence_sync_state"
RUNS_TABLE = "sequence_sync_runs"
IN_FLIGHT_TABLE = "sequence_sync_in_flight"
CLAIMS_TABLE = "sequence_sync_claims"
LEASES_TABLE = "sequence_sync_leases"

metadata = sa.MetaData()


def _scope_columns() -> list[sa.Column[Any]]:
    """Whose state a row is: the first part of every table's primary key."""
    return [
        sa.Column("service", sa.String(32), primary_key=True),
        # The account the service counts against (see ``SequencesHook.account``), never a
        # secret: two connections reaching one account share its state.
        sa.Column("account", sa.String(250), primary_key=True),
        sa.Column("sequence_id", sa.String(100), primary_key=True),
    ]


state_table = sa.Table(
    STATE_TABLE,
    metadata,
    *_scope_columns(),
    sa.Column("contact_key", sa.String(512), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reason", sa.String(64)),
    sa.Column("detail", sa.Text),
    sa.Column("fingerprint", sa.String(32)),
    sa.Column("service_contact_id", sa.String(100)),
    sa.Column("identity", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("first_run_id", sa.String(250)),
    sa.Column("last_run_id", sa.String(250)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_sequence_sync_state_run", state_table.c.sequence_id, state_table.c.last_run_id)

runs_table = sa.Table(
    RUNS_TABLE,
    metadata,
    *_scope_columns(),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("stats", sa.Text, nullable=False),
    sa.Column("finished", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

#: Batches being sent: one row per batch, written before its request leaves and deleted with
#: the batch's outcomes. Marking a batch costs one row instead of one write per key.
in_flight_table = sa.Table(
    IN_FLIGHT_TABLE,
    metadata,
    *_scope_columns(),
    sa.Column("batch_id", sa.String(32), primary_key=True),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("contact_keys", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

#: Phones, emails and external ids sent to a service that merges contacts sharing one (Whippy):
#: one row per batch sent, its keys and a 64-bit hash of each of their values (0: no value),
#: packed, so that a later run refuses another key with the same value (see
#: :class:`~airflow_provider_sequences.sync.identities.SharedIdentities`).
claims_table = sa.Table(
    CLAIMS_TABLE,
    metadata,
    *_scope_columns(),
    sa.Column("claim_id", sa.String(32), primary_key=True),
    sa.Column("fields", sa.String(200), nullable=False),  # comma-separated, the hashes' columns
    sa.Column("contact_keys", sa.Text, nullable=False),  # JSON list
    sa.Column("value_hashes", sa.LargeBinary, nullable=False),  # little-endian uint64, key-major
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

#: Runs syncing a scope now: one row per run (or mapped shard), renewed by its heartbeat. Rows
#: of one scope share a ``lease_group`` (the shards of one task of one DAG run); a run of
#: another group waits for them to end or expire (see :mod:`~airflow_provider_sequences.sync.lease`).
leases_table = sa.Table(
    LEASES_TABLE,
    metadata,
    *_scope_columns(),
    sa.Column("run_id", sa.String(250), primary_key=True),
    sa.Column("lease_group", sa.String(250), nullable=False),
    sa.Column("holder", sa.String(250), nullable=False),  # host and process, for messages
    sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

#: Facts about the state itself (see :mod:`.schema`), e.g. the provider version that upgraded it.
meta_table = sa.Table(
    META_TABLE,
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(250), nullable=False),
)


#: What :meth:`~.scoped.ScopedStore.lookup` answers per key.
LOOKUP_COLUMNS = (
    "contact_key",
    "status",
    "reason",
    "detail",
    "fingerprint",
    "attempts",
    "last_run_id",
    "service_contact_id",
)

#: The state table's columns in the order the store builds its rows (see :mod:`.rows`).
STATE_COLUMNS = tuple(column.name for column in state_table.columns)
