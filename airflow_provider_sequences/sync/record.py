"""The record stage: outcomes into the sync state, and the run's result built from them.

A run that writes a state keeps no outcome in memory: the state holds them, and the result is
read back from it (so a resumed or deferred task reports the whole run). A run that writes
none (a dry run) keeps its result in memory; its store is a
:class:`~airflow_provider_sequences.sync.state.null.NullStore`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import islice

import pandas as pd

from airflow_provider_sequences.sync.contract import BatchOutcome, Identity, ServiceAdapter
from airflow_provider_sequences.sync.masking import mask_text
from airflow_provider_sequences.sync.outcomes import ENROLLMENT_UNCONFIRMED, KeyResult, SyncResult
from airflow_provider_sequences.sync.pending import PendingSet
from airflow_provider_sequences.sync.state.null import Store
from airflow_provider_sequences.sync.values import (
    ADDED,
    NOT_PROCESSED,
    PENDING,
    AddedKeys,
    Claims,
    KeyOutcome,
    PendingKeys,
)

#: Outcomes of a read-back recorded per state write.
CONFIRM_RECORD_SLICE = 20_000
#: Pending keys read from the state at a time for a read-back (it may read them more than once).
PENDING_SLICE = 50_000
#: Rows refused before sending, recorded per state write: a commit per chunk cost 3 s of an
#: unchanged night of ten million rows, which reports its 137,000 refused rows again.
REJECT_SLICE = 20_000


class Recorder:
    """Records a run's outcomes, from the main thread and the sending thread.

    :param store: the state written (a null store when the run writes none).
    :param run_id: this run.
    :param writes_state: whether outcomes go to the state (else they are kept in the result).
    :param mask_values: mask emails and phones in details.
    :param service: the service's name in details people read (its display name).
    """

    def __init__(
        self, store: Store, run_id: str, *, writes_state: bool, mask_values: bool, service: str
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.writes_state = writes_state
        self.mask_values = mask_values
        self.service = service
        self.result = SyncResult()
        self.result.stats.update(unchanged=0, resumed=0)
        self._rejected: list[KeyOutcome] = []
        #: Keys accepted but not confirmed yet, with what identifies them in a read-back. With
        #: a state only the keys an earlier run left pending: those of this run's writes are in
        #: the state (:meth:`confirm` reads them there), not held here for the whole run.
        self.pending: dict[str, Identity] = {}
        self.pending_in_state = 0
        #: Outcomes so far, for progress lines (with a state, keys are not kept in memory).
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def pending_count(self) -> int:
        """How many keys are accepted but not confirmed yet."""
        return len(self.pending) + self.pending_in_state

    def shown(self, detail: str) -> str:
        """A detail as the result and the state hold it: masked when the options say so."""
        return mask_text(detail) if self.mask_values and detail else detail

    def record(
        self,
        outcome: BatchOutcome,
        fingerprints: dict[str, str],
        *,
        batch_id: str | None = None,
        sent: bool = False,
        claims: Claims | None = None,
        mark_next: Sequence[str] | None = None,
        since: datetime | None = None,
    ) -> tuple[str | None, set[str]]:
        """Record a batch's outcomes (``sent``: they answer a send, which counts as an attempt;
        ``claims``: the values it sent, see :class:`SharedIdentities`; ``mark_next``: the keys
        of the next batch, marked in flight in the same commit, ``since`` as
        :meth:`SyncState.mark_in_flight` takes it). Returns what marking
        ``mark_next`` returns (see :meth:`SyncState.mark_in_flight`)."""
        # Added and pending keys (most of them) become rows without a KeyOutcome each.
        added = AddedKeys(outcome.added, fingerprints, sent)
        pending = PendingKeys(outcome.pending, fingerprints, sent)
        outcomes = [
            KeyOutcome(
                key, NOT_PROCESSED, reason, self.shown(detail), fingerprint=fingerprints.get(key), sent=sent
            )
            for key, (reason, detail) in outcome.failed.items()
        ]
        # The state holds the outcomes and :meth:`finish` reads them from there: keeping a
        # second copy of every key here would double the memory of a large run.
        marked: tuple[str | None, set[str]] = (None, set())
        if mark_next is not None:
            marked = self.store.record_and_mark(
                outcomes,
                self.run_id,
                batch_id=batch_id,
                keys=mark_next,
                added=added,
                pending=pending,
                claims=claims,
                since=since,
            )
        else:
            self.store.record(
                outcomes, self.run_id, batch_id=batch_id, added=added, pending=pending, claims=claims
            )
        with self._lock:
            if self.writes_state:
                self.pending_in_state += len(outcome.pending)
            else:
                self.pending.update(outcome.pending)
            self.counts["added"] += len(outcome.added)
            self.counts["not_processed"] += len(outcome.failed)
            if not self.writes_state:
                for key in outcome.added:
                    self.result.add(key)
                for key, (reason, detail) in outcome.failed.items():
                    self.result.reject(key, reason, self.shown(detail))
        return marked

    def reject(self, rejected: pd.DataFrame) -> None:
        """Record rows refused before sending: ``key``, ``reason``, ``detail``, ``fingerprint``."""
        if rejected.empty:
            return
        rows = list(
            zip(
                rejected["key"].tolist(),
                rejected["reason"].tolist(),
                [self.shown(detail) for detail in rejected["detail"].tolist()],
                rejected["fingerprint"].tolist(),
                strict=True,
            )
        )
        if self.writes_state:
            # Nothing was sent for them: a crash before they are written only makes the retry
            # refuse them again.
            self._rejected.extend(KeyOutcome(k, NOT_PROCESSED, r, d, fingerprint=f) for k, r, d, f in rows)
            if len(self._rejected) >= REJECT_SLICE:
                self.flush()
        with self._lock:
            self.counts["not_processed"] += len(rows)
            if self.writes_state:
                return
            for key, reason, detail, _ in rows:
                self.result.reject(key, reason, detail)

    def flush(self) -> None:
        """Write the refused rows not written yet (:meth:`reject` writes them in slices)."""
        if self._rejected:
            self.store.record(self._rejected, self.run_id)
            self._rejected = []

    def carry(self, keys: list[str]) -> None:
        """Keys an earlier run left pending: recorded under this run too, so that its result
        accounts for them even when this run does not read them back either."""
        self.pending.update({key: {} for key in keys})
        if keys and self.writes_state:
            self.store.record([KeyOutcome(key, PENDING) for key in keys], self.run_id)

    def held_elsewhere(self, count: int) -> None:
        """Keys another shard of this run marked since they were planned: its result has them."""
        with self._lock:
            self.result.stats["unchanged"] += count
            self.result.stats["claimed_by_other_shards"] += count

    def confirm(self, adapter: ServiceAdapter, timeout: float, log: logging.Logger) -> int:
        """Resolve pending keys by reading the service back and record the answers; returns
        how many keys were pending.

        With a state, the keys are this run's pending ones there: those it sent and those an
        earlier run left (carried under this run), with their identities.
        """
        pending = (
            self.store.pending_set(self.run_id, PENDING_SLICE)
            if self.writes_state
            else PendingSet.of(self.pending)
        )
        self.pending, self.pending_in_state = {}, 0
        if not pending:
            return 0
        log.info("Waiting for %s to confirm %d contacts", adapter.display_name, len(pending))
        expected = len(pending)
        outcome = adapter.confirm(pending, timeout=timeout)
        if self.writes_state and _only_statuses(outcome, expected):
            # Failures first: then the run's pending rows are exactly the keys found, and one
            # update records them (a row per key cost most of the confirm at a million keys).
            for part in _slices(BatchOutcome(failed=outcome.failed), CONFIRM_RECORD_SLICE):
                self.record(part, {})
            outcome.failed = {}
            found = outcome.added_count
            if self.store.promote_pending(self.run_id, found):
                with self._lock:
                    self.counts["added"] += found
                outcome.added, outcome.found = {}, None
        # In slices: the rows of a million outcomes at once would cost more than the run's keys.
        for part in _slices(outcome, CONFIRM_RECORD_SLICE):
            self.record(part, {})
        return expected

    def finish(self, *, dry_run: bool, would_send: int) -> SyncResult:
        """The run's result. With a state, it is read back from it, so a resumed or deferred
        task reports the whole run, not only its last attempt."""
        if not self.writes_state:
            if dry_run:
                self.result.stats["would_send"] = would_send
                for key in self.pending:  # left pending by an earlier run; a dry run reads nothing back
                    self.result.reject(
                        key,
                        ENROLLMENT_UNCONFIRMED,
                        f"{self.service} accepted this contact in an earlier run; a real run reads "
                        "its enrolment back",
                    )
            return self.result
        return SyncResult(stats=self.result.stats, stored=RunOutcomes(self.store, self.run_id, self.service))


class RunOutcomes:
    """A run's outcomes in the sync state, as its result reads them: keys still pending are
    not processed (``enrollmentUnconfirmed``) until a later run reads them back."""

    def __init__(self, store: Store, run_id: str, service: str) -> None:
        self.store = store
        self.run_id = run_id
        self.unconfirmed = (
            f"{service} accepted this contact but its enrolment was not read back in this run; "
            "the next run confirms it"
        )

    def counts(self) -> Counter[str | None]:
        counts: Counter[str | None] = Counter()
        for (status, reason), count in self.store.run_counts(self.run_id).items():
            counts[self._reason(status, reason)] += count
        return counts

    def keys(self, added: bool) -> Iterator[KeyResult]:
        for key, status, reason, detail in self.store.run_outcomes(self.run_id, added=added):
            found = self._reason(status, reason)
            if found is None:
                yield key, None, None
            elif status == NOT_PROCESSED:
                yield key, found, detail or ""
            else:
                yield key, found, self.unconfirmed

    @staticmethod
    def _reason(status: str, reason: str | None) -> str | None:
        if status == ADDED:
            return None
        return (reason or "") if status == NOT_PROCESSED else ENROLLMENT_UNCONFIRMED


def _only_statuses(outcome: BatchOutcome, expected: int) -> bool:
    """Whether a read-back settles each of the ``expected`` pending keys with a status alone
    (added without a contact id, or failed)."""
    return (
        not outcome.pending
        and outcome.added_count + len(outcome.failed) == expected
        and all(contact_id is None for contact_id in outcome.added.values())
    )


def _slices(outcome: BatchOutcome, size: int) -> Iterator[BatchOutcome]:
    """The outcome in parts of at most ``size`` keys each (the keys found read in slices too)."""
    added, failed = iter(outcome.added.items()), iter(outcome.failed.items())
    pending = iter(outcome.pending.items())
    while part := dict(islice(added, size)):
        yield BatchOutcome(added=part)
    while failures := dict(islice(failed, size)):
        yield BatchOutcome(failed=failures)
    while waiting := dict(islice(pending, size)):
        yield BatchOutcome(pending=waiting)
    found = iter(outcome.found or ())
    while keys := list(islice(found, size)):
        yield BatchOutcome(added=dict.fromkeys(keys))
