"""The layout of provider 0.1.0, which had no schema version.

Revision ID: 0001
Revises: (none)

A 0.1.0 state already holds these tables: each is created only when missing, so upgrading
such a state changes nothing in them. The tables are written out here as they were, not taken
from the current model, which later revisions change.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _scope() -> list[sa.Column[Any]]:
    return [
        sa.Column("service", sa.String(32), primary_key=True),
        sa.Column("connection_id", sa.String(250), primary_key=True),
        sa.Column("sequence_id", sa.String(100), primary_key=True),
    ]


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "sequence_sync_state" not in existing:
        op.create_table(
            "sequence_sync_state",
            *_scope(),
            sa.Column("contact_key", sa.String(512), primary_key=True),
            sa.Column("status", sa.String(20), nullable=False),
            sa.Column("reason", sa.String(64)),
            sa.Column("detail", sa.Text),
            sa.Column("fingerprint", sa.String(32)),
            sa.Column("service_contact_id", sa.String(100)),
            sa.Column("identity", sa.Text),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("first_run_id", sa.String(250)),
            sa.Column("last_run_id", sa.String(250)),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
        op.create_index("ix_sequence_sync_state_run", "sequence_sync_state", ["sequence_id", "last_run_id"])
    if "sequence_sync_runs" not in existing:
        op.create_table(
            "sequence_sync_runs",
            *_scope(),
            sa.Column("run_id", sa.String(250), primary_key=True),
            sa.Column("stats", sa.Text, nullable=False),
            sa.Column("finished", sa.Boolean, nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "sequence_sync_in_flight" not in existing:
        op.create_table(
            "sequence_sync_in_flight",
            *_scope(),
            sa.Column("batch_id", sa.String(32), primary_key=True),
            sa.Column("run_id", sa.String(250), nullable=False),
            sa.Column("contact_keys", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
    if "sequence_sync_claims" not in existing:
        op.create_table(
            "sequence_sync_claims",
            *_scope(),
            sa.Column("claim_id", sa.String(32), primary_key=True),
            sa.Column("fields", sa.String(200), nullable=False),
            sa.Column("contact_keys", sa.Text, nullable=False),
            sa.Column("value_hashes", sa.LargeBinary, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )
