"""The sync state store: what each key's last outcome was in a sequence of a service's account.

:class:`SyncState` reads and writes one scope. Its parts: :mod:`.in_flight` (batches being
sent), :mod:`.leases` (runs syncing the scope now), :mod:`.runs` (runs' counters and claimed
values); the tables are in :mod:`.tables`, and the rows it writes come from :mod:`.rows`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

import msgspec
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from airflow_provider_sequences.sync.pending import PendingSet
from airflow_provider_sequences.sync.state.in_flight import InFlightBatches
from airflow_provider_sequences.sync.state.leases import Leases
from airflow_provider_sequences.sync.state.read import read_state
from airflow_provider_sequences.sync.state.rows import state_rows
from airflow_provider_sequences.sync.state.runs import ClaimedValues, Runs
from airflow_provider_sequences.sync.state.scoped import utc_now
from airflow_provider_sequences.sync.state.tables import (
    IN_FLIGHT_TABLE,
    STATE_COLUMNS,
    STATE_TABLE,
    claims_table,
    in_flight_table,
    runs_table,
    state_table,
)
from airflow_provider_sequences.sync.values import (
    ADDED,
    PENDING,
    AddedKeys,
    Claims,
    KeyOutcome,
    PendingKeys,
    Scope,
)

#: Where a batch's rows wait for their upsert on PostgreSQL: one per session, emptied at commit.
INCOMING_TABLE = "sequence_sync_state_incoming"
_INCOMING = f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING_TABLE} (LIKE {STATE_TABLE}) ON COMMIT DELETE ROWS"

#: Where a state row holds its key.
_KEY = STATE_COLUMNS.index("contact_key")

#: ``json.loads``, about 3x faster: a Whippy read-back loads an identity per pending key.
_load_identity = msgspec.json.decode


class SyncState(InFlightBatches, Leases, Runs, ClaimedValues):
    """Reads and writes the sync state of one scope (service, account, sequence).

    :param engine: a SQLAlchemy engine for the state database (SQLite or PostgreSQL).
    :param scope: whose records this object reads and writes.
    """

    def __init__(self, engine: sa.Engine, scope: Scope) -> None:
        super().__init__(engine, scope)
        self._raw_upsert: str | None = None
        self._now_processor: Any = None
        if engine.dialect.name == "sqlite":
            compiled = self._upsert().compile(dialect=engine.dialect)
            if tuple(compiled.positiontup or ()) == STATE_COLUMNS:
                self._raw_upsert = str(compiled)
                moment = state_table.c.created_at.type.dialect_impl(engine.dialect)
                self._now_processor = moment.bind_processor(engine.dialect)

    def is_empty(self) -> bool:
        """Whether nothing at all is recorded for this scope (no key, no batch in flight)."""
        for table in (STATE_TABLE, IN_FLIGHT_TABLE):
            # Only constant names and placeholders are formatted in; the scope is bound.
            sql = f"SELECT 1 FROM {table} WHERE {self._scope_sql} LIMIT 1"  # noqa: S608
            if self._fetch(sql, self._scope_params):
                return False
        return True

    def pending_set(self, run_id: str, slice_size: int = 50_000) -> PendingSet:
        """Keys ``run_id`` left pending, with their identity (the stored JSON, loaded; ``{}``
        when none was stored), read from the state in slices each time the set is read."""
        mark = self._placeholder
        where = f"WHERE {self._scope_sql} AND status = {mark} AND last_run_id = {mark}"
        params = (*self._scope_params, PENDING, run_id)
        # Only constant names and placeholders are formatted in; the values are bound.
        (count,) = self._fetch(f"SELECT COUNT(*) FROM {STATE_TABLE} {where}", params)[0]  # noqa: S608
        sql = f"SELECT contact_key, identity FROM {STATE_TABLE} {where}"  # noqa: S608

        def read() -> Iterator[list[tuple[str, Any]]]:
            for rows in self._slices(sql, params, slice_size):
                # An identity that is its key's own text shares the key's string.
                loaded = ((key, _load_identity(identity) if identity else {}) for key, identity in rows)
                yield [(key, key if value == key else value) for key, value in loaded]

        return PendingSet(int(count), read)

    def run_counts(self, run_id: str) -> dict[tuple[str, str | None], int]:
        """How many keys whose last run is ``run_id`` have each (status, reason)."""
        sql = (
            f"SELECT status, reason, COUNT(*) FROM {STATE_TABLE} "  # noqa: S608
            f"WHERE {self._scope_sql} AND last_run_id = {self._placeholder} GROUP BY status, reason"
        )
        return {
            (status, reason): count
            for status, reason, count in self._fetch(sql, (*self._scope_params, run_id))
        }

    def run_outcomes(
        self, run_id: str, *, added: bool | None = None
    ) -> Iterator[tuple[str, str, str | None, str | None]]:
        """(key, status, reason, detail) of every key whose last run is ``run_id``, by key;
        ``added``: only the added keys (``True``) or only the others (``False``).

        Streamed in slices: a run of a million keys is never all in memory twice.
        """
        # SQLite would walk the key index for the order and fetch each row from the table (3x
        # slower at a million keys, and every key of the sequence, not only this run's): the
        # unary plus keeps it on the run index and has it sort the run's rows itself.
        order = "+contact_key" if self.engine.dialect.name == "sqlite" else "contact_key"
        status = "" if added is None else f" AND status {'=' if added else '<>'} {self._placeholder}"
        sql = (
            f"SELECT contact_key, status, reason, detail FROM {STATE_TABLE} "  # noqa: S608
            f"WHERE {self._scope_sql} AND last_run_id = {self._placeholder}{status} ORDER BY {order}"
        )
        params = (*self._scope_params, run_id) if added is None else (*self._scope_params, run_id, ADDED)
        for rows in self._slices(sql, params, 10_000):
            for row in rows:
                yield row[0], row[1], row[2], row[3]

    def to_frame(self) -> pd.DataFrame:
        """The whole state of this scope as a DataFrame (for people, not for the sync)."""
        return read_state(
            self.engine,
            service=self.scope.service,
            account=self.scope.account,
            sequence_id=self.scope.sequence_id,
        )

    def record(
        self,
        outcomes: Iterable[KeyOutcome],
        run_id: str,
        *,
        batch_id: str | None = None,
        added: AddedKeys | None = None,
        pending: PendingKeys | None = None,
        claims: Claims | None = None,
    ) -> int:
        """Upsert outcomes in one transaction; a key's attempts grow by one per send.

        :param batch_id: the batch these outcomes answer (see :meth:`mark_sending`): it stops
            being in flight in the same transaction.
        :param added: added keys, recorded (before ``outcomes``) as if each were a
            :class:`KeyOutcome` of status ``added``.
        :param pending: pending keys, recorded (before ``outcomes``) as if each were a
            :class:`KeyOutcome` of status ``pending``.
        :param claims: the sent batch's claims (see :class:`Claims`), stored in the same commit.
        """
        rows = self._rows(outcomes, run_id, added, pending)
        if not rows and batch_id is None and claims is None:
            return 0
        with self.engine.begin() as connection:
            self._write(connection, rows, batch_id, claims)
        return len(rows)

    def record_and_mark(
        self,
        outcomes: Iterable[KeyOutcome],
        run_id: str,
        *,
        batch_id: str | None,
        keys: Sequence[str],
        added: AddedKeys | None = None,
        pending: PendingKeys | None = None,
        claims: Claims | None = None,
        since: datetime | None = None,
    ) -> tuple[str | None, set[str]]:
        """:meth:`record` a batch's outcomes and :meth:`mark_in_flight` the next batch's ``keys``
        in one transaction; returns what :meth:`mark_in_flight` returns.

        A sync that sends batch after batch commits once per batch instead of twice.
        """
        rows = self._rows(outcomes, run_id, added, pending)
        with self.engine.begin() as connection:
            self.lock_scope(connection)
            self._write(connection, rows, batch_id, claims)
            return self._mark_free(connection, keys, run_id, since)

    def _rows(
        self,
        outcomes: Iterable[KeyOutcome],
        run_id: str,
        added: AddedKeys | None = None,
        pending: PendingKeys | None = None,
    ) -> list[tuple[Any, ...]]:
        moment: Any = utc_now()
        if self._now_processor is not None:
            # Once per call, not once per row and column: it is the same moment for all.
            moment = self._now_processor(moment)
        return state_rows(self.scope, run_id, moment, outcomes, added, pending)

    def _write(
        self,
        connection: sa.Connection,
        rows: list[tuple[Any, ...]],
        batch_id: str | None,
        claims: Claims | None = None,
    ) -> None:
        if claims is not None:
            connection.execute(sa.insert(claims_table), self._claims_row(claims))
        if batch_id is not None:
            connection.execute(
                sa.delete(in_flight_table).where(
                    self._where(in_flight_table), in_flight_table.c.batch_id == batch_id
                )
            )
        if not rows:
            return
        if self._raw_upsert is not None:
            # SQLite: the driver's executemany on the statement compiled once. SQLAlchemy's
            # per-row parameter handling cost more than SQLite's own work (about 4x).
            connection.exec_driver_sql(self._raw_upsert, rows)
        elif self._copy_upsert is not None and len({row[_KEY] for row in rows}) == len(rows):
            # PostgreSQL through psycopg 3: the batch is copied into a temporary table and
            # upserted from it in one statement (a statement per row cost 2x SQLite's write).
            # One statement may not upsert a key twice: such a batch goes row by row.
            cursor = connection.connection.cursor()
            try:
                cursor.execute(_INCOMING)
                with cursor.copy(f"COPY {INCOMING_TABLE} ({', '.join(STATE_COLUMNS)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cursor.execute(self._copy_upsert)
            finally:
                cursor.close()
        else:
            connection.execute(self._upsert(), [dict(zip(STATE_COLUMNS, row, strict=True)) for row in rows])

    def promote_pending(self, run_id: str, expected: int) -> bool:
        """Record every key ``run_id`` left pending as added, in one statement, when exactly
        ``expected`` keys are pending; otherwise change nothing and return False.

        A read-back that found its keys would otherwise upsert a row per key (most of the
        confirm's cost at a million keys). The count guards the shortcut: it holds only when
        the keys still pending are the ones the caller found.
        """
        table = state_table
        statement = (
            sa.update(table)
            .where(self._where(table), table.c.last_run_id == run_id, table.c.status == PENDING)
            .values(status=ADDED, reason=None, detail=None, updated_at=utc_now())
        )
        with self.engine.connect() as connection, connection.begin() as transaction:
            if connection.execute(statement).rowcount == expected:
                return True
            transaction.rollback()
        return False

    def merge_scope(self, old_account: str) -> int:
        """Move the rows an earlier version kept under ``old_account`` (a connection id) into
        this scope; returns how many state rows moved. A key recorded in both keeps this
        scope's row, made ``added`` when the old one was: nobody enrolled is sent again."""
        if old_account == self.scope.account:
            return 0
        moved = 0
        with self.engine.begin() as connection:
            self.lock_scope(connection)
            for table in (state_table, runs_table, in_flight_table, claims_table):
                old = sa.and_(
                    table.c.service == self.scope.service,
                    table.c.account == old_account,
                    table.c.sequence_id == self.scope.sequence_id,
                )
                if table is state_table:
                    if not connection.execute(
                        sa.select(sa.func.count()).select_from(table).where(old)
                    ).scalar():
                        return 0
                    theirs = table.alias("theirs")
                    enrolled_there = sa.exists().where(
                        theirs.c.service == table.c.service,
                        theirs.c.account == old_account,
                        theirs.c.sequence_id == table.c.sequence_id,
                        theirs.c.contact_key == table.c.contact_key,
                        theirs.c.status == ADDED,
                    )
                    connection.execute(
                        sa.update(table)
                        .where(self._where(table), table.c.status != ADDED, enrolled_there)
                        .values(status=ADDED, reason=None, detail=None)
                    )
                if table in (state_table, runs_table):
                    # Rows this scope already has win; the old copies go.
                    mine = table.alias("mine")
                    name = "contact_key" if table is state_table else "run_id"
                    connection.execute(
                        sa.delete(table).where(
                            old,
                            sa.exists().where(
                                mine.c.service == table.c.service,
                                mine.c.account == self.scope.account,
                                mine.c.sequence_id == table.c.sequence_id,
                                mine.c[name] == table.c[name],
                            ),
                        )
                    )
                count = connection.execute(sa.update(table).where(old).values(account=self.scope.account))
                if table is state_table:
                    moved = count.rowcount
        return int(moved)

    @cached_property
    def _copy_upsert(self) -> str | None:
        """PostgreSQL's upsert of the rows copied into the temporary table (psycopg 3 only)."""
        if self.engine.dialect.name != "postgresql" or self.engine.dialect.driver != "psycopg":
            return None
        incoming = sa.table(INCOMING_TABLE, *(sa.column(name) for name in STATE_COLUMNS))
        return str(self._upsert(sa.select(incoming)).compile(dialect=self.engine.dialect))

    def _upsert(self, rows: sa.Select[Any] | None = None) -> Any:
        """The state's upsert: of one row's values, or of the rows ``rows`` selects."""
        dialect = self.engine.dialect.name
        insert: Any
        if dialect == "postgresql":
            insert = postgresql.insert(state_table)
            if rows is not None:
                insert = insert.from_select(STATE_COLUMNS, rows)
        elif dialect == "sqlite":
            insert = sqlite.insert(state_table)
        else:
            raise ValueError(f"the sync state supports SQLite and PostgreSQL, not {dialect}")
        new = insert.excluded
        return insert.on_conflict_do_update(
            index_elements=[
                state_table.c.service,
                state_table.c.account,
                state_table.c.sequence_id,
                state_table.c.contact_key,
            ],
            set_={
                "status": new.status,
                "reason": new.reason,
                "detail": new.detail,
                "fingerprint": sa.func.coalesce(new.fingerprint, state_table.c.fingerprint),
                "service_contact_id": sa.func.coalesce(
                    new.service_contact_id, state_table.c.service_contact_id
                ),
                "identity": sa.func.coalesce(new.identity, state_table.c.identity),
                "attempts": state_table.c.attempts + new.attempts,
                "last_run_id": new.last_run_id,
                "updated_at": new.updated_at,
            },
        )
