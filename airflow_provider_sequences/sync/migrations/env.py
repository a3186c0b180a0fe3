"""Alembic's entry point: always run by :func:`..schema.upgrade` on a connection it locked."""

from __future__ import annotations

from alembic import context

from airflow_provider_sequences.sync.schema import VERSION_TABLE
from airflow_provider_sequences.sync.state.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # SQLite alters a table by copying it: migrations use op.batch_alter_table.
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
