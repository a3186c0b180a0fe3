"""The store of a run that writes nothing: a dry run, or a run without a sync state.

It answers every read as an empty state would and drops every write, so the stages read and
write one way whether a run has a state or not.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TypeAlias

import pandas as pd

from airflow_provider_sequences.sync.pending import PendingSet
from airflow_provider_sequences.sync.state.store import SyncState
from airflow_provider_sequences.sync.state.tables import LOOKUP_COLUMNS
from airflow_provider_sequences.sync.values import AddedKeys, Claims, KeyOutcome, PendingKeys


class NullStore:
    """An empty sync state that keeps nothing written to it."""

    def lookup(self, keys: Sequence[str]) -> pd.DataFrame:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in LOOKUP_COLUMNS})

    def is_empty(self) -> bool:
        return True

    def key_count(self) -> int:
        return 0

    def last_run_rows(self) -> int | None:
        return None

    def enrolled_keys(self, excluding: Collection[str], slice_size: int = 100_000) -> Iterator[list[str]]:
        return iter(())

    def live_runs(self) -> set[str]:
        return set()

    def in_flight(self) -> dict[str, list[str]]:
        return {}

    def adopt_in_flight(self, run_id: str) -> dict[str, list[str]]:
        return {}

    def settle_in_flight(self, batch_ids: Iterable[str], run_id: str, unresolved: Sequence[str] = ()) -> None:
        return None

    def iter_claims(self) -> Iterator[Claims]:
        return iter(())

    def pending_set(self, run_id: str, slice_size: int = 50_000) -> PendingSet:
        return PendingSet.of({})

    def run_counts(self, run_id: str) -> dict[tuple[str, str | None], int]:
        return {}

    def run_outcomes(
        self, run_id: str, *, added: bool | None = None
    ) -> Iterator[tuple[str, str, str | None, str | None]]:
        return iter(())

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
        return 0

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
        return None, set()

    def mark_in_flight(
        self, keys: Sequence[str], run_id: str, *, since: datetime | None = None
    ) -> tuple[str | None, set[str]]:
        return None, set()

    def promote_pending(self, run_id: str, expected: int) -> bool:
        return False


#: What the stages read and write: the sync state, or a :class:`NullStore`.
Store: TypeAlias = "SyncState | NullStore"
