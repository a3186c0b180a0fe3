"""Leases on a scope: which runs sync it now (see :mod:`~airflow_provider_sequences.sync.lease`)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from airflow_provider_sequences.sync.state.scoped import ScopedStore, utc_now
from airflow_provider_sequences.sync.state.tables import leases_table
from airflow_provider_sequences.sync.values import DEFERRED_HOLDER, LeaseRow


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back naive; they are UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


class Leases(ScopedStore):
    """Takes, renews and ends runs' leases on the scope."""

    def take_lease(self, run_id: str, group: str, holder: str, ttl: float) -> LeaseRow | None:
        """Take or renew ``run_id``'s lease on the scope unless a live run of another group, or
        another live process of this same run, holds one; returns that holder's row then
        (``None``: taken). Expired leases are removed on the way."""
        table = leases_table
        now = utc_now()
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
        now = utc_now()
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
