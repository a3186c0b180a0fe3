"""Per run: its pace and whether its values may be shown; an index of not-processed keys.

Revision ID: 0004
Revises: 0003

``sequence_sync_runs`` gains the run's requests (writes, reads), its duration and the least time
the service's rate limits allow for those requests (``floor_seconds``), for the Sequence syncs
view, and ``reveal_values``: runs saved before it are masked in the view. Two partial indexes
serve the view's pages of a run's not-processed keys, all of them or of one reason, in key
order; they hold only not-processed rows, so syncing added keys does not write them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_NOT_PROCESSED = sa.text("status = 'not_processed'")


def upgrade() -> None:
    # Added columns only: SQLite adds them in place, without rebuilding the table.
    op.add_column("sequence_sync_runs", sa.Column("write_requests", sa.Integer))
    op.add_column("sequence_sync_runs", sa.Column("read_requests", sa.Integer))
    op.add_column("sequence_sync_runs", sa.Column("seconds", sa.Float))
    op.add_column("sequence_sync_runs", sa.Column("floor_seconds", sa.Float))
    op.add_column(
        "sequence_sync_runs",
        sa.Column("reveal_values", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    for name, columns in (
        ("ix_sequence_sync_state_not_processed", ["last_run_id", "contact_key"]),
        ("ix_sequence_sync_state_not_processed_reason", ["last_run_id", "reason", "contact_key"]),
    ):
        op.create_index(
            name,
            "sequence_sync_state",
            ["service", "account", "sequence_id", *columns],
            sqlite_where=_NOT_PROCESSED,
            postgresql_where=_NOT_PROCESSED,
        )
