"""The push stage: send a batch through an adapter, splitting batches the service rejects whole."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    RetryWaitTooLongError,
    SequencesApiError,
    SyncAbortedError,
)
from airflow_provider_sequences.sync.contract import BatchOutcome, ServiceAdapter
from airflow_provider_sequences.sync.outcomes import INVALID_INPUT, REQUEST_FAILED

log = logging.getLogger(__name__)


@dataclass
class Pusher:
    """Sends batches, isolating bad rows by bisection and stopping when the service is down.

    A batch the service refuses for its rows (a 400 or 422 pinned to items) is split in
    halves until each bad row stands alone, so one bad row costs only its own outcome. A batch
    that fails for the service's reasons after the hook's retries (429s, 5xx, lost
    connections) becomes ``requestFailed``, a reason a later run retries; after
    ``max_failed_batches`` such batches in a row, the rest is not sent at all. An error about
    the request itself (a bad key, a missing scope, a wrong step) stops the run.

    A batch refused whole by an answer that names no contact (Whippy documents its errors as
    descriptions only) may be refused for one contact or for the request: it is split in halves
    too, but the writes spent on such splits are capped per run (``max_blind_split_writes``),
    since they come out of a small budget (Whippy: 10 writes a minute). What the cap leaves
    unsplit is ``requestFailed``, for the next run. A contact refused alone is ``invalidInput``
    when the service accepted some write of the run (its settings work), else ``requestFailed``.

    :param adapter: the service adapter.
    :param max_failed_batches: consecutive failed batches before giving up on the run.
    :param max_blind_split_writes: writes a run may spend splitting batches refused by an
        answer that names no contact.
    """

    adapter: ServiceAdapter
    max_failed_batches: int = 3
    max_blind_split_writes: int = 30
    failed_in_a_row: int = 0
    splits: int = 0
    blind_split_writes: int = 0
    accepted: int = 0
    last_failure: str = ""
    _stopped: bool = field(default=False, repr=False)
    _refused: SyncAbortedError | None = field(default=None, repr=False)

    @property
    def stopped(self) -> bool:
        """Whether sending stopped because the service kept failing."""
        return self._stopped

    def push(self, batch: pd.DataFrame, *, resent_keys: frozenset[str] = frozenset()) -> BatchOutcome:
        """Send one batch and say what became of every key in it."""
        if self._refused is not None:
            # A batch already queued behind the refused one is not sent: it would be refused too.
            raise self._refused
        if self._stopped:
            return _all_failed(
                batch,
                REQUEST_FAILED,
                f"not sent: the previous {self.max_failed_batches} batches failed ({self.last_failure})",
            )
        outcome = BatchOutcome()
        alone: dict[str, str] = {}
        self._push(batch, resent_keys, outcome, alone)
        if alone and not self.accepted:
            # Every piece refused and nothing of the run accepted: likely the request, so it
            # counts as a failed batch (bounding the writes such a run spends).
            self.failed_in_a_row += 1
            self.last_failure = next(iter(alone.values()))
            if self.failed_in_a_row >= self.max_failed_batches:
                self._stopped = True
        for key, detail in alone.items():
            if self.accepted:
                outcome.failed[key] = (INVALID_INPUT, f"{detail} when sent alone")
            else:
                outcome.failed[key] = (
                    REQUEST_FAILED,
                    f"{detail} when sent alone, and accepted no write of this run, so the request "
                    "rather than the contact may be at fault; the next run tries again",
                )
        return outcome

    def _push(
        self, batch: pd.DataFrame, resent_keys: frozenset[str], outcome: BatchOutcome, alone: dict[str, str]
    ) -> None:
        try:
            outcome.merge(self.adapter.push(batch, resent_keys=resent_keys))
            self.failed_in_a_row = 0
            self.accepted += 1
        except SequencesApiError as exc:
            if exc.rejects_request and self.adapter.is_row_error(exc):
                if len(batch) == 1:
                    detail = f"{exc.service} rejected this contact: {_field_details(exc)}"
                    outcome.failed[str(batch["key"].iloc[0])] = (INVALID_INPUT, detail)
                    return
                self.splits += 1
                half = len(batch) // 2
                log.info(
                    "%s rejected a batch of %d for its rows; splitting it in halves", exc.service, len(batch)
                )
                self._push(batch.iloc[:half], resent_keys, outcome, alone)
                self._push(batch.iloc[half:], resent_keys, outcome, alone)
                return
            if exc.rejects_request and self.adapter.may_be_row_error(exc):
                self._split_blind(batch, resent_keys, outcome, alone, exc)
                return
            if exc.is_retryable or isinstance(exc, OutcomeUnknownError):
                self.failed_in_a_row += 1
                self.last_failure = str(exc)
                if self.failed_in_a_row >= self.max_failed_batches:
                    self._stopped = True
                log.warning("A batch of %d failed after retries: %s", len(batch), exc)
                outcome.merge(_all_failed(batch, REQUEST_FAILED, f"the request failed after retries: {exc}"))
                return
            if isinstance(exc, RetryWaitTooLongError):
                self._refused = SyncAbortedError(f"{exc.service} asked to wait too long: {exc}")
            else:
                self._refused = SyncAbortedError(
                    f"{exc.service} refused the request, so no batch can succeed: {exc}"
                )
            raise self._refused from exc

    def _split_blind(
        self,
        batch: pd.DataFrame,
        resent_keys: frozenset[str],
        outcome: BatchOutcome,
        alone: dict[str, str],
        exc: SequencesApiError,
    ) -> None:
        """Split a batch refused by an answer that names no contact, within the run's cap."""
        refused = f"{exc.service} refused this contact ({exc.detail or exc.status})"
        if len(batch) == 1:
            alone[str(batch["key"].iloc[0])] = refused
            return
        if self.blind_split_writes + 2 > self.max_blind_split_writes:
            self.failed_in_a_row += 1
            self.last_failure = str(exc)
            if self.failed_in_a_row >= self.max_failed_batches:
                self._stopped = True
            detail = (
                f"{exc.service} refused a batch of {len(batch)} with this contact, without saying which "
                f"contact ({exc.detail or exc.status}); this run already spent "
                f"{self.blind_split_writes} writes splitting such batches, so the next run tries again"
            )
            outcome.merge(_all_failed(batch, REQUEST_FAILED, detail))
            return
        self.splits += 1
        self.blind_split_writes += 2
        half = len(batch) // 2
        log.info(
            "%s refused a batch of %d without naming a contact; splitting it in halves (%d of %d "
            "split writes spent)",
            exc.service,
            len(batch),
            self.blind_split_writes,
            self.max_blind_split_writes,
        )
        self._push(batch.iloc[:half], resent_keys, outcome, alone)
        self._push(batch.iloc[half:], resent_keys, outcome, alone)


def _all_failed(batch: pd.DataFrame, reason: str, detail: str) -> BatchOutcome:
    return BatchOutcome(failed={str(key): (reason, detail) for key in batch["key"].tolist()})


def _field_details(error: SequencesApiError) -> str:
    if error.errors:
        return "; ".join(str(e.get("detail") or e.get("field")) for e in error.errors)
    return error.detail or f"{error.status}"
