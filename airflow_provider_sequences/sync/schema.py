"""The sync state's schema version, and bringing a state up to date with Alembic.

Every revision lives in ``migrations/versions``; revision ``0001`` is the layout of provider
0.1.0, which had no version, so a 0.1.0 state upgrades in place. Alembic's version table is
named :data:`VERSION_TABLE`, not ``alembic_version``, so a state kept in Airflow's own metadata
database never meets Airflow's migrations.

:func:`ensure_current` runs before a sync reads its state. Several workers may start at once,
so the upgrade itself runs under a lock held by the database: PostgreSQL's transaction-level
advisory lock, SQLite's write lock (``BEGIN IMMEDIATE``). The others wait for it, then find the
state current and do nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from airflow_provider_sequences import __version__
from airflow_provider_sequences.exceptions import StateSchemaError as StateSchemaError

VERSION_TABLE = "sequence_sync_schema_version"
META_TABLE = "sequence_sync_meta"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)
# Alembic announces its dialect at INFO each time it looks at a state: noise in task logs.
logging.getLogger("alembic").setLevel(logging.WARNING)

#: Key of the PostgreSQL advisory lock the upgrade holds (any constant of our own).
_LOCK_KEY = 0x5EC5_0E9C_5C4E_0001 - (1 << 63)


@dataclass(frozen=True)
class Revision:
    """One schema revision, as ``history`` lists it."""

    revision: str
    down_revision: str | None
    message: str


def _config(connection: sa.Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision this provider knows."""
    revision = _script().get_current_head()
    if revision is None:
        raise StateSchemaError(f"no migrations found in {MIGRATIONS}")
    return revision


def history() -> list[Revision]:
    """Every revision this provider knows, oldest first."""
    revisions = list(_script().walk_revisions())
    return [
        Revision(
            r.revision,
            r.down_revision if isinstance(r.down_revision, str) else None,
            (r.doc or "").strip().splitlines()[0] if r.doc else "",
        )
        for r in reversed(revisions)
    ]


def current(connection: sa.Connection) -> str | None:
    """The state's revision; ``None`` for an empty database or a state of provider 0.1.0."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def written_by(connection: sa.Connection) -> str | None:
    """The provider version that last brought the state up to date, when recorded."""
    if not sa.inspect(connection).has_table(META_TABLE):
        return None
    row = connection.execute(
        sa.text(f"SELECT value FROM {META_TABLE} WHERE name = 'provider_version'")  # noqa: S608
    ).first()
    return None if row is None else str(row[0])


def _refuse_unknown(connection: sa.Connection, revision: str | None) -> None:
    known = {r.revision for r in history()}
    if revision is None or revision in known:
        return
    by = written_by(connection)
    raise StateSchemaError(
        f"the sync state has schema revision {revision!r}"
        + (f", written by airflow-provider-sequences {by}" if by else "")
        + f"; this provider (airflow-provider-sequences {__version__}) knows revisions up to "
        f"{head()!r}. Upgrade the provider on every worker; nothing was written to the state."
    )


@contextmanager
def _locked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that holds the lock only one upgrade may hold."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # The driver would begin lazily, on the first write; take the write lock now so a
            # second process waits here (busy timeout) instead of failing half-way.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Bring the state up to date; returns (revision before, revision after).

    :raises StateSchemaError: the state is newer than this provider (nothing is written).
    """
    with _locked(engine) as connection:
        before = current(connection)
        _refuse_unknown(connection, before)
        target = head()
        if before != target:
            command.upgrade(_config(connection), "head")
            _record_version(connection)
            log.info("Sync state schema upgraded from revision %s to %s", before or "none (0.1.0)", target)
    return before, target


def _record_version(connection: sa.Connection) -> None:
    table = sa.table(META_TABLE, sa.column("name"), sa.column("value"))
    connection.execute(sa.delete(table).where(table.c.name == "provider_version"))
    connection.execute(sa.insert(table).values(name="provider_version", value=__version__))


def ensure_current(engine: sa.Engine) -> None:
    """Upgrade the state when it is behind; refuse it when it is newer than this provider.

    The common case, a current state, costs one read and takes no lock.
    """
    with engine.connect() as connection:
        revision = current(connection)
        _refuse_unknown(connection, revision)
    if revision != head():
        upgrade(engine)
