"""The sync state: what each key's last outcome was in a sequence, in a plain SQL table.

One row per (service, account, sequence, key). It is written batch by batch as the service
answers, so a run killed half-way resumes where it stopped, and it is a table users can query
themselves ("who was enrolled when, and who failed why"). SQLAlchemy Core keeps it portable:
the embedded default is SQLite, deployments with several workers use PostgreSQL.

The tables below are the current schema; every change to them comes with an Alembic revision in
``migrations/versions`` (see :mod:`.schema`), which brings existing states up to date.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from airflow_provider_sequences.sync.schema import META_TABLE, ensure_current
from airflow_provider_sequences.sync.values import ADDED as ADDED
from airflow_provider_sequences.sync.values import DEFERRED_HOLDER as DEFERRED_HOLDER
from airflow_provider_sequences.sync.values import NOT_PROCESSED as NOT_PROCESSED
from airflow_provider_sequences.sync.values import PENDING as PENDING
from airflow_provider_sequences.sync.values import SENDING as SENDING
from airflow_provider_sequences.sync.values import AddedKeys as AddedKeys
from airflow_provider_sequences.sync.values import Claims as Claims
from airflow_provider_sequences.sync.values import KeyOutcome as KeyOutcome
from airflow_provider_sequences.sync.values import LeaseRow as LeaseRow
from airflow_provider_sequences.sync.values import PendingKeys as PendingKeys
from airflow_provider_sequences.sync.values import Scope as Scope

STATE_TABLE = "sequence_sync_state"
RUNS_TABLE = "sequence_sync_runs"
IN_FLIGHT_TABLE = "sequence_sync_in_flight"
CLAIMS_TABLE = "sequence_sync_claims"
LEASES_TABLE = "sequence_sync_leases"

# IN lists are cut to this size: SQLite allows 32,766 bound parameters per statement.
_LOOKUP_SLICE = 5_000

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

#: What :meth:`SyncState.lookup` answers per key.
_LOOKUP_COLUMNS = (
    "contact_key",
    "status",
    "reason",
    "detail",
    "fingerprint",
    "attempts",
    "last_run_id",
    "service_contact_id",
)


def _frame(rows: list[tuple[Any, ...]], columns: Sequence[str]) -> pd.DataFrame:
    """A frame of object columns from row tuples (column by column: faster than by rows)."""
    values = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    return pd.DataFrame(
        {name: pd.Series(list(column), dtype=object) for name, column in zip(columns, values, strict=True)}
    )


#: ``json.dumps(identity, sort_keys=True)`` without building an encoder per call (a run
#: stores an identity per pending key).
_identity_json = json.JSONEncoder(sort_keys=True).encode
#: ``json.loads``, about 3x faster: a Whippy read-back loads an identity per pending key.
_load_identity = msgspec.json.decode

#: The state table's columns in the order :meth:`SyncState.record` builds its rows.
_COLUMNS = tuple(column.name for column in state_table.columns)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back naive; they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def default_state_url(airflow_home: str | Path) -> str:
    """The embedded default: a SQLite file under ``AIRFLOW_HOME``."""
    return f"sqlite:///{Path(airflow_home) / 'sequence_sync_state.db'}"


def create_state_engine(url: str) -> sa.Engine:
    """An engine for the state database, with SQLite set up for concurrent writers."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets readers and one writer work at once; several mapped tasks share the file.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Outcomes land at random places of the key index, so every batch dirties about a
            # page per key. A cache of 32 MB (not 2) keeps the index's upper levels and recent
            # leaves in memory, and a checkpoint every 10,000 WAL pages (not 1,000) copies a
            # page written by several batches once, with a tenth of the fsyncs.
            cursor.execute("PRAGMA cache_size=-32768")
            cursor.execute("PRAGMA wal_autocheckpoint=10000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def read_state(
    engine: sa.Engine,
    *,
    service: str | None = None,
    account: str | None = None,
    sequence_id: str | None = None,
) -> pd.DataFrame:
    """Rows of the state table as a DataFrame, optionally of one service, account or sequence.

    Timestamps are UTC-aware on every database (SQLite hands them back naive).
    """
    ensure_current(engine)
    scope = {"service": service, "account": account, "sequence_id": sequence_id}

    def rows_of(table: sa.Table) -> sa.Select[Any]:
        query = sa.select(table)
        for name, value in scope.items():
            if value is not None:
                query = query.where(table.c[name] == str(value))
        return query

    query = rows_of(state_table).order_by(state_table.c.sequence_id, state_table.c.contact_key)
    flying = rows_of(in_flight_table)
    with engine.connect() as connection:
        frame = pd.read_sql(query, connection)
        batches = connection.execute(flying).all()
    for name in ("created_at", "updated_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True).dt.as_unit("us")
    if batches:
        frame = _with_in_flight(frame, batches)
    return frame


def _with_in_flight(frame: pd.DataFrame, batches: Sequence[Any]) -> pd.DataFrame:
    """The state as people read it: keys of batches in flight show as ``sending``, with the
    send counted in their attempts."""
    scope = ["service", "account", "sequence_id", "contact_key"]
    flying = pd.DataFrame(
        [
            (b.service, b.account, b.sequence_id, key, b.run_id, b.created_at)
            for b in batches
            for key in json.loads(b.contact_keys)
        ],
        columns=[*scope, "run_id", "sent_at"],
    ).drop_duplicates(scope, keep="last")
    flying["sent_at"] = pd.to_datetime(flying["sent_at"], utc=True).dt.as_unit("us")
    merged = frame.merge(flying, on=scope, how="outer", indicator=True)
    sending = merged["_merge"] != "left_only"
    new = merged["_merge"] == "right_only"
    merged.loc[sending, "status"] = SENDING
    attempts = pd.to_numeric(merged["attempts"], errors="coerce").fillna(0).astype("int64")
    merged["attempts"] = attempts + sending.astype("int64")
    for name in ("first_run_id", "last_run_id"):
        merged.loc[new, name] = merged.loc[new, "run_id"]
    merged.loc[sending, "last_run_id"] = merged.loc[sending, "run_id"]
    for name in ("created_at", "updated_at"):
        merged.loc[new, name] = merged.loc[new, "sent_at"]
    merged.loc[sending, "updated_at"] = merged.loc[sending, "sent_at"]
    merged = merged.drop(columns=["run_id", "sent_at", "_merge"])
    return merged.sort_values(["sequence_id", "contact_key"], ignore_index=True)


class SyncState:
    """Reads and writes the sync state of one scope (service, account, sequence).

    :param engine: a SQLAlchemy engine for the state database (SQLite or PostgreSQL).
    :param scope: whose records this object reads and writes.
    """

    def __init__(self, engine: sa.Engine, scope: Scope) -> None:
        self.engine = engine
        self.scope = scope
        ensure_current(engine)
        self._raw_upsert: str | None = None
        self._now_processor: Any = None
        if engine.dialect.name == "sqlite":
            compiled = self._upsert().compile(dialect=engine.dialect)
            if tuple(compiled.positiontup or ()) == _COLUMNS:
                self._raw_upsert = str(compiled)
                moment = state_table.c.created_at.type.dialect_impl(engine.dialect)
                self._now_processor = moment.bind_processor(engine.dialect)

    def _where(self, table: sa.Table) -> sa.ColumnElement[bool]:
        return sa.and_(
            table.c.service == self.scope.service,
            table.c.account == self.scope.account,
            table.c.sequence_id == self.scope.sequence_id,
        )

    # -- reading ------------------------------------------------------------------------------

    def lookup(self, keys: Sequence[str]) -> pd.DataFrame:
        """The recorded state of these keys (those never seen are absent).

        Columns: ``contact_key``, ``status``, ``reason``, ``detail``, ``fingerprint``, ``attempts``,
        ``last_run_id``, ``service_contact_id``.
        """
        columns = _LOOKUP_COLUMNS
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), _LOOKUP_SLICE):
            part = list(keys[start : start + _LOOKUP_SLICE])
            # Only constant names and placeholders are formatted in; every value is bound.
            found += self._fetch(
                f"SELECT {', '.join(columns)} FROM {STATE_TABLE} WHERE {self._scope_sql} "  # noqa: S608
                f"AND contact_key IN ({', '.join([self._mark] * len(part))})",
                [*self._scope_params, *part],
            )
        return _frame(found, columns)

    @property
    def _mark(self) -> str:
        """The driver's placeholder (SQLite ``?``; psycopg ``%s``)."""
        return "?" if self.engine.dialect.paramstyle == "qmark" else "%s"

    @property
    def _scope_sql(self) -> str:
        return f"service = {self._mark} AND account = {self._mark} AND sequence_id = {self._mark}"

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

    def is_empty(self) -> bool:
        """Whether nothing at all is recorded for this scope (no key, no batch in flight)."""
        for table in (STATE_TABLE, IN_FLIGHT_TABLE):
            # Only constant names and placeholders are formatted in; the scope is bound.
            sql = f"SELECT 1 FROM {table} WHERE {self._scope_sql} LIMIT 1"  # noqa: S608
            if self._fetch(sql, self._scope_params):
                return False
        return True

    def pending_identities(self, run_id: str) -> dict[str, Any]:
        """Keys ``run_id`` left pending, with their identity (the stored JSON, loaded; ``{}``
        when none was stored).

        Read in slices, and an identity that is its key's own text shares the key's string: the
        read-back of a million keys holds each key's text once.
        """
        sql = (
            f"SELECT contact_key, identity FROM {STATE_TABLE} "  # noqa: S608
            f"WHERE {self._scope_sql} AND status = {self._mark} AND last_run_id = {self._mark}"
        )
        found: dict[str, Any] = {}
        with self.engine.connect() as connection:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(sql, (*self._scope_params, PENDING, run_id))
                while rows := cursor.fetchmany(10_000):
                    for key, identity in rows:
                        value = _load_identity(identity) if identity else {}
                        found[key] = key if value == key else value
            finally:
                cursor.close()
        return found

    def run_outcomes(self, run_id: str) -> Iterator[tuple[str, str, str | None, str | None]]:
        """(key, status, reason, detail) of every key whose last run is ``run_id``, by key.

        Streamed in slices: a run of a million keys is never all in memory twice.
        """
        # SQLite would walk the key index for the order and fetch each row from the table (3x
        # slower at a million keys, and every key of the sequence, not only this run's): the
        # unary plus keeps it on the run index and has it sort the run's rows itself.
        order = "+contact_key" if self.engine.dialect.name == "sqlite" else "contact_key"
        sql = (
            f"SELECT contact_key, status, reason, detail FROM {STATE_TABLE} "  # noqa: S608
            f"WHERE {self._scope_sql} AND last_run_id = {self._mark} ORDER BY {order}"
        )
        with self.engine.connect() as connection:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(sql, (*self._scope_params, run_id))
                while rows := cursor.fetchmany(10_000):
                    for row in rows:
                        yield row[0], row[1], row[2], row[3]
            finally:
                cursor.close()

    def to_frame(self) -> pd.DataFrame:
        """The whole state of this scope as a DataFrame (for people, not for the sync)."""
        return read_state(
            self.engine,
            service=self.scope.service,
            account=self.scope.account,
            sequence_id=self.scope.sequence_id,
        )

    # -- writing ------------------------------------------------------------------------------

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
        """:meth:`record` a batch's outcomes and :meth:`claim_batch` the next batch's ``keys``
        in one transaction; returns what :meth:`claim_batch` returns.

        A sync that sends batch after batch commits once per batch instead of twice.
        """
        rows = self._rows(outcomes, run_id, added, pending)
        with self.engine.begin() as connection:
            self.lock_scope(connection)
            self._write(connection, rows, batch_id, claims)
            return self._claim(connection, keys, run_id, since)

    def _rows(
        self,
        outcomes: Iterable[KeyOutcome],
        run_id: str,
        added: AddedKeys | None = None,
        pending: PendingKeys | None = None,
    ) -> list[tuple[Any, ...]]:
        """State rows as tuples in the compiled statement's column order (see ``_COLUMNS``)."""
        now: Any = _now()
        if self._now_processor is not None:
            # Once per call, not once per row and column: it is the same moment for all.
            now = self._now_processor(now)
        scope = (self.scope.service, self.scope.account, self.scope.sequence_id)
        rows: list[tuple[Any, ...]] = []
        if added is not None:
            # The same row a KeyOutcome(key, ADDED, ...) makes, with no object per key.
            fingerprint, sent = added.fingerprints.get, 1 if added.sent else 0
            rows = [
                (
                    *scope,
                    key,
                    ADDED,
                    None,
                    None,
                    fingerprint(key),
                    contact_id,
                    None,
                    sent,
                    run_id,
                    run_id,
                    now,
                    now,
                )
                for key, contact_id in added.contact_ids.items()
            ]
        if pending is not None:
            fingerprint, sent = pending.fingerprints.get, 1 if pending.sent else 0
            rows += [
                (
                    *scope,
                    key,
                    PENDING,
                    None,
                    None,
                    fingerprint(key),
                    None,
                    _identity_json(identity) if identity else None,
                    sent,
                    run_id,
                    run_id,
                    now,
                    now,
                )
                for key, identity in pending.identities.items()
            ]
        return rows + [
            (
                *scope,
                o.key,
                o.status,
                o.reason,
                o.detail,
                o.fingerprint,
                o.service_contact_id,
                _identity_json(o.identity) if o.identity else None,
                1 if o.sent or o.status == SENDING else 0,
                run_id,
                run_id,
                now,
                now,
            )
            for o in outcomes
        ]

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
        else:
            connection.execute(self._upsert(), [dict(zip(_COLUMNS, row, strict=True)) for row in rows])

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
            .values(status=ADDED, reason=None, detail=None, updated_at=_now())
        )
        with self.engine.connect() as connection, connection.begin() as transaction:
            if connection.execute(statement).rowcount == expected:
                return True
            transaction.rollback()
        return False

    def mark_sending(self, keys: Sequence[str], run_id: str) -> str:
        """Record that a batch of keys is about to be sent; returns the batch's id."""
        row = self._in_flight_row(keys, run_id)
        with self.engine.begin() as connection:
            connection.execute(sa.insert(in_flight_table), row)
        return str(row["batch_id"])

    def claim_batch(
        self, keys: Sequence[str], run_id: str, *, since: datetime | None = None
    ) -> tuple[str | None, set[str]]:
        """Mark the keys of a batch about to be sent as in flight under ``run_id``, except those
        another live run of the scope (a sibling shard) holds; returns ``(batch id or None when
        nothing is left, keys held elsewhere)``.

        Held: in flight under another live run, or recorded added or pending by another run at
        or after ``since`` (when this run planned them, they were not). One transaction under
        the scope's lock, so two shards never both claim a key.
        """
        with self.engine.begin() as connection:
            self.lock_scope(connection)
            return self._claim(connection, keys, run_id, since)

    def _claim(
        self, connection: sa.Connection, keys: Sequence[str], run_id: str, since: datetime | None
    ) -> tuple[str | None, set[str]]:
        taken = self._held_elsewhere(connection, keys, run_id, since)
        free = [key for key in keys if key not in taken] if taken else list(keys)
        if not free:
            return None, taken
        row = self._in_flight_row(free, run_id)
        connection.execute(sa.insert(in_flight_table), row)
        return str(row["batch_id"]), taken

    def _held_elsewhere(
        self, connection: sa.Connection, keys: Sequence[str], run_id: str, since: datetime | None
    ) -> set[str]:
        others = self._live_runs(connection) - {run_id}
        if not others or not keys:
            # Alone in the scope (the usual case): one small query per batch.
            return set()
        wanted = set(keys)
        taken: set[str] = set()
        flying = sa.select(in_flight_table.c.contact_keys).where(
            self._where(in_flight_table), in_flight_table.c.run_id.in_(sorted(others))
        )
        for (batch_keys,) in connection.execute(flying):
            taken.update(key for key in json.loads(batch_keys) if key in wanted)
        if since is not None:
            table = state_table
            for start in range(0, len(keys), _LOOKUP_SLICE):
                part = list(keys[start : start + _LOOKUP_SLICE])
                recorded = sa.select(table.c.contact_key).where(
                    self._where(table),
                    table.c.contact_key.in_(part),
                    table.c.status.in_((ADDED, PENDING)),
                    table.c.last_run_id != run_id,
                    table.c.updated_at >= since,
                )
                taken.update(connection.execute(recorded).scalars())
        return taken

    def _in_flight_row(self, keys: Sequence[str], run_id: str) -> dict[str, Any]:
        return {
            "service": self.scope.service,
            "account": self.scope.account,
            "sequence_id": self.scope.sequence_id,
            "batch_id": uuid.uuid4().hex,
            "run_id": run_id,
            "contact_keys": json.dumps(list(keys)),
            "created_at": _now(),
        }

    def in_flight(self) -> dict[str, list[str]]:
        """Every batch in flight in this scope, whoever marked it: id -> keys."""
        query = sa.select(in_flight_table.c.batch_id, in_flight_table.c.contact_keys).where(
            self._where(in_flight_table)
        )
        with self.engine.connect() as connection:
            return {batch_id: json.loads(keys) for batch_id, keys in connection.execute(query)}

    def adopt_in_flight(self, run_id: str) -> dict[str, list[str]]:
        """The batches ``run_id`` must resolve: its own (an earlier attempt of it died) and those
        of runs that are no longer alive (no live lease), which become its own in the same
        transaction, so that exactly one run resolves each. Batches of live runs (a sibling
        shard sending now) are theirs: left alone. Returns id -> keys."""
        table = in_flight_table
        with self.engine.begin() as connection:
            self.lock_scope(connection)
            alive = sorted(self._live_runs(connection) - {run_id})
            orphans = sa.update(table).where(self._where(table), table.c.run_id != run_id)
            if alive:
                orphans = orphans.where(table.c.run_id.not_in(alive))
            connection.execute(orphans.values(run_id=run_id))
            query = sa.select(table.c.batch_id, table.c.contact_keys).where(
                self._where(table), table.c.run_id == run_id
            )
            return {batch_id: json.loads(keys) for batch_id, keys in connection.execute(query)}

    def settle_in_flight(self, batch_ids: Iterable[str], run_id: str, unresolved: Sequence[str] = ()) -> None:
        """Forget batches left in flight once a run dealt with their keys; ``unresolved`` keys
        (absent from that run) stay in flight, in one batch, unless the state records them
        added (a row an earlier version of the provider left behind: they are enrolled)."""
        ids = list(batch_ids)
        if not ids:
            return
        if unresolved:
            known = self.lookup(list(unresolved))
            enrolled = set(known.loc[known["status"] == ADDED, "contact_key"].tolist())
            unresolved = [key for key in unresolved if key not in enrolled]
        with self.engine.begin() as connection:
            connection.execute(
                sa.delete(in_flight_table).where(
                    self._where(in_flight_table), in_flight_table.c.batch_id.in_(ids)
                )
            )
            if unresolved:
                connection.execute(sa.insert(in_flight_table), self._in_flight_row(unresolved, run_id))

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

    # -- leases (see :mod:`~airflow_provider_sequences.sync.lease`) ---------------------------

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
        query = sa.select(table.c.run_id).where(self._where(table), table.c.expires_at > _now())
        return set(connection.execute(query).scalars())

    def take_lease(self, run_id: str, group: str, holder: str, ttl: float) -> LeaseRow | None:
        """Take or renew ``run_id``'s lease on the scope unless a live run of another group, or
        another live process of this same run, holds one; returns that holder's row then
        (``None``: taken). Expired leases are removed on the way."""
        table = leases_table
        now = _now()
        with self.engine.begin() as connection:
            self.lock_scope(connection)
            connection.execute(sa.delete(table).where(self._where(table), table.c.expires_at <= now))
            rows = connection.execute(
                sa.select(table.c.run_id, table.c.lease_group, table.c.holder, table.c.expires_at).where(
                    self._where(table)
                )
            ).all()
            for row in rows:
                other = LeaseRow(row[0], row[1], row[2], _aware(row[3]))
                if other.lease_group != group:
                    return other
                if other.run_id == run_id and other.holder not in (holder, DEFERRED_HOLDER):
                    return other  # an earlier attempt of this run is still alive
            connection.execute(sa.delete(table).where(self._where(table), table.c.run_id == run_id))
            connection.execute(
                sa.insert(table),
                {
                    "service": self.scope.service,
                    "account": self.scope.account,
                    "sequence_id": self.scope.sequence_id,
                    "run_id": run_id,
                    "lease_group": group,
                    "holder": holder,
                    "acquired_at": now,
                    "expires_at": now + timedelta(seconds=ttl),
                },
            )
        return None

    def renew_lease(self, run_id: str, holder: str, ttl: float) -> bool:
        """Push ``run_id``'s lease ``ttl`` seconds ahead (and name its new holder); False when
        the lease is gone (it expired and the scope was taken)."""
        table = leases_table
        now = _now()
        statement = (
            sa.update(table)
            .where(self._where(table), table.c.run_id == run_id, table.c.expires_at > now)
            .values(holder=holder, expires_at=now + timedelta(seconds=ttl))
        )
        with self.engine.begin() as connection:
            return bool(connection.execute(statement).rowcount)

    def release_lease(self, run_id: str) -> None:
        """End ``run_id``'s lease."""
        table = leases_table
        with self.engine.begin() as connection:
            connection.execute(sa.delete(table).where(self._where(table), table.c.run_id == run_id))

    def _upsert(self) -> Any:
        dialect = self.engine.dialect.name
        insert: Any
        if dialect == "postgresql":
            insert = postgresql.insert(state_table)
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

    # -- runs ---------------------------------------------------------------------------------

    def load_run(self, run_id: str) -> dict[str, Any] | None:
        """The stats saved for a run, or ``None`` when the run never started here."""
        query = sa.select(runs_table.c.stats, runs_table.c.finished).where(
            self._where(runs_table), runs_table.c.run_id == run_id
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        stats: dict[str, Any] = json.loads(row[0])
        stats["finished"] = bool(row[1])
        return stats

    def any_run_finished(self) -> bool:
        """Whether a run of this scope was saved as finished (see :meth:`save_run`)."""
        query = (
            sa.select(runs_table.c.run_id)
            .where(self._where(runs_table), runs_table.c.finished.is_(True))
            .limit(1)
        )
        with self.engine.connect() as connection:
            return connection.execute(query).first() is not None

    def save_run(self, run_id: str, stats: dict[str, Any], *, finished: bool = False) -> None:
        """Save a run's counters (so a resumed or deferred task can finish the run's result)."""
        now = _now()
        values = {
            "service": self.scope.service,
            "account": self.scope.account,
            "sequence_id": self.scope.sequence_id,
            "run_id": run_id,
            "stats": json.dumps(stats, sort_keys=True),
            "finished": finished,
            "started_at": now,
            "updated_at": now,
        }
        dialect = self.engine.dialect.name
        insert: Any = postgresql.insert(runs_table) if dialect == "postgresql" else sqlite.insert(runs_table)
        statement = insert.on_conflict_do_update(
            index_elements=[
                runs_table.c.service,
                runs_table.c.account,
                runs_table.c.sequence_id,
                runs_table.c.run_id,
            ],
            set_={"stats": insert.excluded.stats, "finished": finished, "updated_at": now},
        )
        with self.engine.begin() as connection:
            connection.execute(statement, values)

    # -- claims (services that merge contacts sharing a phone, email or external id) ----------

    def save_claims(self, claims: Claims | None) -> None:
        """Store one batch's claims on their own (a sync stores them with the batch's outcome:
        see :meth:`record`); ``None`` stores nothing."""
        if claims is None:
            return
        with self.engine.begin() as connection:
            connection.execute(sa.insert(claims_table), self._claims_row(claims))

    def _claims_row(self, claims: Claims) -> dict[str, Any]:
        return {
            "service": self.scope.service,
            "account": self.scope.account,
            "sequence_id": self.scope.sequence_id,
            "claim_id": uuid.uuid4().hex,
            "fields": ",".join(claims.fields),
            "contact_keys": json.dumps(claims.keys),
            "value_hashes": claims.hashes,
            "created_at": _now(),
        }

    def iter_claims(self) -> Iterator[Claims]:
        """Every batch's claims in this scope, oldest first."""
        query = (
            sa.select(claims_table.c.fields, claims_table.c.contact_keys, claims_table.c.value_hashes)
            .where(self._where(claims_table))
            .order_by(claims_table.c.created_at, claims_table.c.claim_id)
        )
        with self.engine.connect() as connection:
            for fields, keys, hashes in connection.execution_options(yield_per=50).execute(query):
                yield Claims(tuple(fields.split(",")), json.loads(keys), bytes(hashes))
