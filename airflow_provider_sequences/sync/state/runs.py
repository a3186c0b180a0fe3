"""Runs' saved counters, and the values sent to services that merge contacts sharing one."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from airflow_provider_sequences.sync.pace import RunPace
from airflow_provider_sequences.sync.state.scoped import ScopedStore, utc_now
from airflow_provider_sequences.sync.state.tables import claims_table, runs_table
from airflow_provider_sequences.sync.values import Claims


class Runs(ScopedStore):
    """Each run's counters, so a resumed or deferred task can finish the run's result."""

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

    def last_run_rows(self) -> int | None:
        """The rows the scope's last finished run read, or ``None`` before one finished: about
        the state's key count for a nightly export of the whole CRM, read from one row where a
        count reads the whole index (some 3 s at ten million keys)."""
        query = (
            sa.select(runs_table.c.stats)
            .where(self._where(runs_table), runs_table.c.finished.is_(True))
            .order_by(runs_table.c.updated_at.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        rows = json.loads(row[0]).get("rows")
        return int(rows) if isinstance(rows, int) else None

    def save_run(
        self,
        run_id: str,
        stats: dict[str, Any],
        *,
        finished: bool = False,
        pace: RunPace | None = None,
        reveal_values: bool = False,
    ) -> None:
        """Save a run's counters (so a resumed or deferred task can finish the run's result), and
        with its last save its pace and whether the view may show its values."""
        now = utc_now()
        values = {
            "service": self.scope.service,
            "account": self.scope.account,
            "sequence_id": self.scope.sequence_id,
            "run_id": run_id,
            "stats": json.dumps(stats, sort_keys=True),
            "finished": finished,
            "started_at": now,
            "updated_at": now,
            "reveal_values": reveal_values,
        }
        if pace is not None:
            values.update(
                write_requests=pace.write_requests,
                read_requests=pace.read_requests,
                seconds=pace.seconds,
                floor_seconds=pace.floor_seconds,
            )
        dialect = self.engine.dialect.name
        insert: Any = postgresql.insert(runs_table) if dialect == "postgresql" else sqlite.insert(runs_table)
        kept = ("service", "account", "sequence_id", "run_id", "started_at")
        statement = insert.on_conflict_do_update(
            index_elements=[
                runs_table.c.service,
                runs_table.c.account,
                runs_table.c.sequence_id,
                runs_table.c.run_id,
            ],
            set_={name: getattr(insert.excluded, name) for name in values if name not in kept},
        )
        with self.engine.begin() as connection:
            connection.execute(statement, values)

    def load_pace(self, run_id: str) -> RunPace | None:
        """The pace saved for a run, or ``None`` (a deferred task's first part saves its own)."""
        t = runs_table
        query = sa.select(t.c.write_requests, t.c.read_requests, t.c.seconds, t.c.floor_seconds).where(
            self._where(t), t.c.run_id == run_id
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None or row[2] is None:
            return None
        return RunPace(int(row[0] or 0), int(row[1] or 0), float(row[2]), float(row[3] or 0.0))


class ClaimedValues(ScopedStore):
    """Phones, emails and external ids sent, per batch (see
    :class:`~airflow_provider_sequences.sync.identities.SharedIdentities`)."""

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
            "created_at": utc_now(),
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
