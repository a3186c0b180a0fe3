"""What every part of the store shares: the scope it reads and writes, and reading keys."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Sequence
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import pandas as pd
import sqlalchemy as sa

from airflow_provider_sequences.sync.schema import ensure_current
from airflow_provider_sequences.sync.state.tables import (
    LEASES_TABLE,
    LOOKUP_COLUMNS,
    STATE_TABLE,
    leases_table,
)
from airflow_provider_sequences.sync.values import ADDED, Scope

# IN lists are cut to this size: SQLite allows 32,766 bound parameters per statement.
LOOKUP_SLICE = 5_000


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _frame(rows: list[tuple[Any, ...]], columns: Sequence[str]) -> pd.DataFrame:
    """A frame of object columns from row tuples (column by column: faster than by rows)."""
    values = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    return pd.DataFrame(
        {name: pd.Series(list(column), dtype=object) for name, column in zip(columns, values, strict=True)}
    )


class ScopedStore:
    """The sync state of one scope (service, account, sequence): the parts of
    :class:`~airflow_provider_sequences.sync.state.store.SyncState` share this.

    :param engine: a SQLAlchemy engine for the state database (SQLite or PostgreSQL).
    :param scope: whose records this object reads and writes.
    """

    def __init__(self, engine: sa.Engine, scope: Scope) -> None:
        self.engine = engine
        self.scope = scope
        ensure_current(engine)

    def _where(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(
            table.c.service == self.scope.service,
            table.c.account == self.scope.account,
            table.c.sequence_id == self.scope.sequence_id,
        )

    def lookup(self, keys: Sequence[str]) -> pd.DataFrame:
        """The recorded state of these keys (those never seen are absent).

        Columns: ``contact_key``, ``status``, ``reason``, ``detail``, ``fingerprint``, ``attempts``,
        ``last_run_id``, ``service_contact_id``.
        """
        columns = LOOKUP_COLUMNS
        found: list[tuple[Any, ...]] = []
        select = f"SELECT {', '.join(columns)} FROM {STATE_TABLE} WHERE {self._scope_sql}"  # noqa: S608
        for start in range(0, len(keys), LOOKUP_SLICE):
            part = list(keys[start : start + LOOKUP_SLICE])
            # Only constant names and placeholders are formatted in; every value is bound.
            if self.engine.dialect.name == "postgresql":
                # One array parameter: psycopg parses a statement of 5,000 placeholders anew
                # each time (most of a lookup's cost).
                found += self._fetch(f"{select} AND contact_key = ANY(%s)", [*self._scope_params, part])
            else:
                marks = ", ".join([self._placeholder] * len(part))
                found += self._fetch(f"{select} AND contact_key IN ({marks})", [*self._scope_params, *part])
        return _frame(found, columns)

    def key_count(self) -> int:
        """How many keys the state records for this scope."""
        sql = f"SELECT count(*) FROM {STATE_TABLE} WHERE {self._scope_sql}"  # noqa: S608
        return int(self._fetch(sql, self._scope_params)[0][0])

    def enrolled_keys(self, excluding: Collection[str], slice_size: int = 100_000) -> Iterator[list[str]]:
        """Slices of the keys recorded ``added`` whose last run is not one of ``excluding``,
        read in one pass over the scope (the caller keeps what it needs of each slice)."""
        runs = sorted(excluding)
        sqlite = self.engine.dialect.name == "sqlite"
        # SQLite: the unary plus keeps every index out, for a scan of the table in its order;
        # the scope's indexes would fetch each row apart (4x slower when the scope is most of
        # the table).
        mark = self._placeholder
        scope = self._scope_sql
        if sqlite:
            scope = f"+service = {mark} AND +account = {mark} AND +sequence_id = {mark}"
        sql = (
            f"SELECT contact_key FROM {STATE_TABLE} WHERE {scope} "  # noqa: S608
            f"AND status = {mark}"
        )
        if runs:
            marks = ", ".join([mark] * len(runs))
            sql += f" AND (last_run_id IS NULL OR last_run_id NOT IN ({marks}))"
        params = (*self._scope_params, ADDED, *runs)
        for rows in self._slices(sql, params, slice_size):
            yield [row[0] for row in rows]

    def _slices(self, sql: str, params: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
        """A plain query's rows, ``size`` at a time, through the driver's own cursor.

        On PostgreSQL a server-side cursor: the driver's default one would hold the whole result
        in memory before the first row (ten million rows: gigabytes).
        """
        with self.engine.connect() as connection:
            if self.engine.dialect.name == "postgresql":
                cursor = connection.connection.cursor("sequence_sync_slices")
            else:
                cursor = connection.connection.cursor()
            try:
                cursor.execute(sql, tuple(params))
                while rows := cursor.fetchmany(size):
                    yield rows
            finally:
                cursor.close()

    @property
    def _placeholder(self) -> str:
        """The driver's placeholder (SQLite ``?``; psycopg ``%s``)."""
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    @property
    def _scope_sql(self) -> str:
        mark = self._placeholder
        return f"service = {mark} AND account = {mark} AND sequence_id = {mark}"

    @property
    def _scope_params(self) -> list[str]:
        return [self.scope.service, self.scope.account, self.scope.sequence_id]

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Rows of a plain query through the driver's own cursor.

        The sync reads a row per key of the export: SQLAlchemy's per-row result handling cost
        more than the query itself, and these columns need no type conversion.
        """
        with self.engine.connect() as connection:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(sql, tuple(params))
                return [tuple(row) for row in cursor.fetchall()]
            finally:
                cursor.close()

    def lock_scope(self, connection: sa.Connection) -> None:
        """Serialise this transaction with every other one of the scope that calls this.

        PostgreSQL: a transaction-level advisory lock on the scope. SQLite: a write as the
        transaction's first statement takes the database's write lock until the commit (what
        ``BEGIN IMMEDIATE`` does), so what it reads next no other writer changes.
        """
        if self.engine.dialect.name == "postgresql":
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(self._lock_key)))
        else:
            connection.execute(
                sa.update(leases_table).where(sa.false()).values(expires_at=leases_table.c.expires_at)
            )

    @cached_property
    def _lock_key(self) -> int:
        """The scope as a signed 64-bit advisory lock key, the same in every process."""
        text = "\x1f".join((LEASES_TABLE, self.scope.service, self.scope.account, self.scope.sequence_id))
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)

    def live_runs(self) -> set[str]:
        """Runs holding an unexpired lease on the scope now."""
        with self.engine.connect() as connection:
            return self._live_runs(connection)

    def _live_runs(self, connection: sa.Connection) -> set[str]:
        """Runs holding an unexpired lease on the scope."""
        table = leases_table
        query = sa.select(table.c.run_id).where(self._where(table), table.c.expires_at > utc_now())
        return set(connection.execute(query).scalars())
