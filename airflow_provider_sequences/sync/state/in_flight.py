"""Batches in flight: a row per batch being sent, written (marked) before its request leaves
and deleted with the batch's outcomes, so a crash leaves exactly the batches whose answers it
interrupted. Marking a batch costs one row instead of one write per key."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from airflow_provider_sequences.sync.state.scoped import LOOKUP_SLICE, ScopedStore, utc_now
from airflow_provider_sequences.sync.state.tables import in_flight_table, state_table
from airflow_provider_sequences.sync.values import ADDED, PENDING


class InFlightBatches(ScopedStore):
    """Marks batches in flight, and hands those a dead run left to the run that resolves them."""

    def mark_sending(self, keys: Sequence[str], run_id: str) -> str:
        """Mark a batch of keys in flight, whoever else holds them; returns the batch's id."""
        row = self._in_flight_row(keys, run_id)
        with self.engine.begin() as connection:
            connection.execute(sa.insert(in_flight_table), row)
        return str(row["batch_id"])

    def mark_in_flight(
        self, keys: Sequence[str], run_id: str, *, since: datetime | None = None
    ) -> tuple[str | None, set[str]]:
        """Mark the keys of a batch about to be sent as in flight under ``run_id``, except those
        another live run of the scope (a sibling shard) holds; returns ``(batch id or None when
        nothing is left, keys held elsewhere)``.

        Held: in flight under another live run, or recorded added or pending by another run at
        or after ``since`` (when this run planned them, they were not). One transaction under
        the scope's lock, so two shards never both mark a key.
        """
        with self.engine.begin() as connection:
            self.lock_scope(connection)
            return self._mark_free(connection, keys, run_id, since)

    def _mark_free(
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
            for start in range(0, len(keys), LOOKUP_SLICE):
                part = list(keys[start : start + LOOKUP_SLICE])
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
            "created_at": utc_now(),
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
