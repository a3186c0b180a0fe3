"""Facts about the state itself: which provider version last brought it up to date.

Revision ID: 0002
Revises: 0001

An older provider that meets a newer state names that version when it refuses to use it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sequence_sync_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(250), nullable=False),
    )
