"""What the Sequence syncs view reads from the sync state, in one place.

Every column name the view depends on is here, so that a change of the state's schema (a
migration, the scope becoming an account) is one edit. No Airflow imports: these are plain
SQLAlchemy queries on the tables of :mod:`airflow_provider_sequences.sync.state`.

Queries stay cheap on a sequence of a million keys: the charts come from the runs table (one
row per run, its counts as JSON), and the rows of a run are read a page at a time in key order
(keyset paging on the primary key), never all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from airflow_provider_sequences.sync.pace import RunPace
from airflow_provider_sequences.sync.state import NOT_PROCESSED, runs_table, state_table

#: The columns that name whose state a row is (issue 14 turns the connection into an account).
SCOPE_COLUMNS = ("service", "account", "sequence_id")
#: What the view shows of a key; ``identity`` (phones, emails sent for a read-back) never.
KEY_COLUMNS = (
    "contact_key",
    "status",
    "reason",
    "detail",
    "service_contact_id",
    "attempts",
    "first_run_id",
    "last_run_id",
    "created_at",
    "updated_at",
)
#: The run's counts by reason, saved with its stats when the run completes.
REASONS_STAT = "not_processed_by_reason"
#: Columns of the runs table that revision 0004 added: a state no sync has upgraded yet (the
#: view never writes) lacks them, and its runs then have no pace and are masked.
PACE_COLUMNS = ("write_requests", "read_requests", "seconds", "floor_seconds")
REVEAL_COLUMN = "reveal_values"
#: As a literal, so that the partial indexes on not-processed keys apply (see the state).
_NOT_PROCESSED: sa.ColumnElement[str] = sa.literal_column(f"'{NOT_PROCESSED}'")


@dataclass(frozen=True)
class ScopeId:
    """One sequence reached through one connection (or account) of one service."""

    service: str
    account: str
    sequence_id: str


@dataclass(frozen=True)
class RunSummary:
    """One run of a scope, with the counts its task saved."""

    scope: ScopeId
    run_id: str
    stats: dict[str, Any]
    finished: bool
    started_at: datetime
    updated_at: datetime
    #: What the run spent against its floor; ``None`` for runs saved before it was recorded.
    pace: RunPace | None = None
    #: Whether the run's operator let the view show people's values unmasked.
    reveal_values: bool = False

    def count(self, name: str) -> int:
        value = self.stats.get(name, 0)
        return int(value) if isinstance(value, (int, float)) else 0

    @property
    def reasons(self) -> dict[str, int] | None:
        """Counts by reason, as the run saved them; ``None`` when it did not (an unfinished
        run, or one written by an earlier version)."""
        value = self.stats.get(REASONS_STAT)
        return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else None


@dataclass(frozen=True)
class KeyRow:
    """A key's current row in the state."""

    values: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


@dataclass
class Page:
    """One page of a run's not-processed keys, in key order; ``next_after`` continues it."""

    rows: list[KeyRow] = field(default_factory=list)
    next_after: str | None = None


#: The runs table's columns, by state URL, once they include revision 0004's.
_COLUMNS_SEEN: dict[str, frozenset[str]] = {}


def _run_columns(engine: sa.Engine) -> list[sa.ColumnElement[Any]]:
    """What a :class:`RunSummary` is read from; NULLs (masked, no pace) where the state lacks a
    column."""
    t = runs_table
    present = _runs_columns_of(engine)
    extra = [
        t.c[name] if name in present else sa.null().label(name) for name in (*PACE_COLUMNS, REVEAL_COLUMN)
    ]
    return [t.c.run_id, t.c.stats, t.c.finished, t.c.started_at, t.c.updated_at, *extra]


def _runs_columns_of(engine: sa.Engine) -> frozenset[str]:
    key = engine.url.render_as_string(hide_password=True)
    if key not in _COLUMNS_SEEN:
        names = frozenset(column["name"] for column in sa.inspect(engine).get_columns(runs_table.name))
        if REVEAL_COLUMN not in names:
            return names  # looked at again next time: a sync may upgrade the state meanwhile
        _COLUMNS_SEEN[key] = names
    return _COLUMNS_SEEN[key]


def _summary(scope: ScopeId, row: Sequence[Any]) -> RunSummary:
    writes, reads, seconds, floor, reveal = row[5:10]
    pace = (
        None
        if seconds is None
        else RunPace(int(writes or 0), int(reads or 0), float(seconds), float(floor or 0))
    )
    return RunSummary(
        scope,
        str(row[0]),
        json.loads(row[1]),
        bool(row[2]),
        _aware(row[3]),
        _aware(row[4]),
        pace=pace,
        reveal_values=bool(reveal),
    )


def _aware(moment: Any) -> datetime:
    """SQLite hands timestamps back naive: they are UTC."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    assert isinstance(moment, datetime)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _scope_where(table: sa.Table, scope: ScopeId) -> sa.ColumnElement[bool]:
    return sa.and_(*(table.c[name] == getattr(scope, name) for name in SCOPE_COLUMNS))


def scopes(engine: sa.Engine) -> list[tuple[ScopeId, int, datetime]]:
    """Every scope with runs: (scope, number of runs, last run's time), most recent first."""
    t = runs_table
    columns = [t.c[name] for name in SCOPE_COLUMNS]
    query = (
        sa.select(*columns, sa.func.count(), sa.func.max(t.c.updated_at))
        .group_by(*columns)
        .order_by(sa.func.max(t.c.updated_at).desc())
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [(ScopeId(*map(str, row[:3])), int(row[3]), _aware(row[4])) for row in rows]


def run_keys(engine: sa.Engine) -> list[tuple[ScopeId, str]]:
    """Every (scope, run id) in the runs table: what the view authorizes against."""
    t = runs_table
    query = sa.select(*(t.c[name] for name in SCOPE_COLUMNS), t.c.run_id)
    with engine.connect() as connection:
        return [(ScopeId(*map(str, row[:3])), str(row[3])) for row in connection.execute(query)]


def runs(engine: sa.Engine, scope: ScopeId, *, limit: int = 90) -> list[RunSummary]:
    """The scope's latest ``limit`` runs, oldest first."""
    t = runs_table
    query = (
        sa.select(*_run_columns(engine))
        .where(_scope_where(t, scope))
        .order_by(t.c.updated_at.desc(), t.c.run_id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [_summary(scope, row) for row in rows][::-1]


def run(engine: sa.Engine, scope: ScopeId, run_id: str) -> RunSummary | None:
    """One run of the scope, or ``None``."""
    t = runs_table
    query = sa.select(*_run_columns(engine)).where(_scope_where(t, scope), t.c.run_id == run_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else _summary(scope, row)


def not_processed_page(
    engine: sa.Engine,
    scope: ScopeId,
    run_id: str,
    *,
    reason: str | None = None,
    key_prefix: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> Page:
    """The keys the run left not processed (their last outcome is this run's), a page at a
    time in key order: ``after`` is the previous page's last key."""
    t = state_table
    query = sa.select(*(t.c[name] for name in KEY_COLUMNS)).where(
        _scope_where(t, scope), t.c.last_run_id == run_id, t.c.status == _NOT_PROCESSED
    )
    if reason:
        query = query.where(t.c.reason == reason)
    if key_prefix:
        # A range on the primary key rather than LIKE: it uses the index on every database.
        query = query.where(t.c.contact_key >= key_prefix, t.c.contact_key < key_prefix + "\U0010ffff")
    if after is not None:
        query = query.where(t.c.contact_key > after)
    query = query.order_by(t.c.contact_key).limit(limit + 1)
    with engine.connect() as connection:
        rows = [KeyRow(dict(row._mapping)) for row in connection.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1]["contact_key"] if more and rows else None)


def iter_not_processed(
    engine: sa.Engine,
    scope: ScopeId,
    run_id: str,
    *,
    reason: str | None = None,
    key_prefix: str | None = None,
) -> Iterator[KeyRow]:
    """Every not-processed key of the run, page after page (for the CSV download)."""
    after: str | None = None
    while True:
        page = not_processed_page(
            engine, scope, run_id, reason=reason, key_prefix=key_prefix, after=after, limit=5_000
        )
        yield from page.rows
        if page.next_after is None:
            return
        after = page.next_after


def reasons_of_run(engine: sa.Engine, scope: ScopeId, run_id: str) -> dict[str, int]:
    """Counts by reason of the keys whose last outcome is the run's (for runs saved without
    their counts by reason)."""
    t = state_table
    query = (
        sa.select(t.c.reason, sa.func.count())
        .where(_scope_where(t, scope), t.c.last_run_id == run_id, t.c.status == _NOT_PROCESSED)
        .group_by(t.c.reason)
    )
    with engine.connect() as connection:
        return {str(reason or ""): int(count) for reason, count in connection.execute(query)}


def key_rows(engine: sa.Engine, key: str, scopes: Sequence[ScopeId]) -> list[tuple[ScopeId, KeyRow]]:
    """A key's current row in each of these scopes that holds it: one primary-key lookup per
    scope (a search by key alone would scan the table)."""
    t = state_table
    columns = [t.c[name] for name in KEY_COLUMNS]
    found = []
    with engine.connect() as connection:
        for scope in scopes:
            row = connection.execute(
                sa.select(*columns).where(_scope_where(t, scope), t.c.contact_key == key)
            ).first()
            if row is not None:
                found.append((scope, KeyRow(dict(row._mapping))))
    return found


def runs_by_id(engine: sa.Engine, scope: ScopeId, run_ids: Sequence[str]) -> list[RunSummary]:
    """The runs of these ids in the scope, oldest first."""
    t = runs_table
    query = (
        sa.select(*_run_columns(engine))
        .where(_scope_where(t, scope), t.c.run_id.in_(list(run_ids)))
        .order_by(t.c.updated_at)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [_summary(scope, row) for row in rows]
