"""The account, not the connection id, names a scope; leases on scopes.

Revision ID: 0003
Revises: 0002

``connection_id`` becomes ``account`` in every table (two connections to one account share its
state). Existing rows keep their value, the connection id they were written under: the first
run that uses that connection moves them to its account (``SyncState.merge_scope``), so an
upgrade never sends anyone again. ``sequence_sync_leases`` holds the runs syncing a scope now.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TABLES = ("sequence_sync_state", "sequence_sync_runs", "sequence_sync_in_flight", "sequence_sync_claims")


def upgrade() -> None:
    for table in _TABLES:
        # SQLite rebuilds the table (the column is part of the primary key); PostgreSQL renames.
        with op.batch_alter_table(table) as batch:
            batch.alter_column("connection_id", new_column_name="account", existing_type=sa.String(250))
    op.create_table(
        "sequence_sync_leases",
        sa.Column("service", sa.String(32), primary_key=True),
        sa.Column("account", sa.String(250), primary_key=True),
        sa.Column("sequence_id", sa.String(100), primary_key=True),
        sa.Column("run_id", sa.String(250), primary_key=True),
        sa.Column("lease_group", sa.String(250), nullable=False),
        sa.Column("holder", sa.String(250), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
