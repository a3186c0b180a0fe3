"""The push stage: the sending pipeline.

Batches are cut from the prepared contacts (:class:`Sender`), marked in flight in the state,
handed to one sending thread, sent through the adapter with bad rows isolated by bisection
(:class:`Pusher`), and recorded as the service answers (by the recorder,
:mod:`~airflow_provider_sequences.sync.record`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    RetryWaitTooLongError,
    SequencesApiError,
    SyncAbortedError,
)
from airflow_provider_sequences.sync.contract import BatchOutcome, ServiceAdapter
from airflow_provider_sequences.sync.identities import SharedIdentities
from airflow_provider_sequences.sync.lease import ScopeLease
from airflow_provider_sequences.sync.outcomes import INVALID_INPUT, REQUEST_FAILED
from airflow_provider_sequences.sync.pending import PendingSet
from airflow_provider_sequences.sync.record import Recorder
from airflow_provider_sequences.sync.state.null import Store

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


@dataclass(eq=False)
class InFlightBatch:
    """A batch's keys and, once marked in flight in the state, its batch id (``None`` when
    every key was held by another shard, or the run writes no state) and the keys held
    elsewhere."""

    keys: list[str]
    batch_id: str | None = None
    marked: bool = False
    taken: set[str] = field(default_factory=set)


class Sender:
    """Cuts prepared contacts into batches and sends them in one thread of its own.

    One batch is in the service's hands while the run prepares the next, so the run costs the
    longer of the two, not their sum. Keys are marked in flight (the state's in-flight table)
    before their request can leave, and an answered batch is recorded at once, in the sending
    thread, so a crash finds at most the batch whose answer it interrupted in flight. A batch
    waiting in the sending thread is marked in the commit that records the batch before it.

    :param adapter: the service adapter.
    :param store: where batches are marked and outcomes recorded.
    :param recorder: records outcomes.
    :param pusher: sends one batch (see :class:`Pusher`).
    :param run_id: this run.
    :param batch_size: contacts per request.
    :param lease: the run's lease on its scope: sending stops when it is lost.
    :param identities: values claimed for services that merge contacts (stored with outcomes).
    :param on_settled: called after each batch is settled (progress lines).
    """

    def __init__(
        self,
        adapter: ServiceAdapter,
        store: Store,
        recorder: Recorder,
        pusher: Pusher,
        run_id: str,
        *,
        batch_size: int,
        lease: ScopeLease | None,
        identities: SharedIdentities | None,
        on_settled: Callable[[], None],
    ) -> None:
        self.adapter = adapter
        self.store = store
        self.recorder = recorder
        self.pusher = pusher
        self.run_id = run_id
        self.batch_size = batch_size
        self.lease = lease
        self.identities = identities
        self.on_settled = on_settled
        #: Keys that may already be at the service, sent again (see :meth:`ServiceAdapter.push`).
        self.resent: set[str] = set()
        #: Keys other runs record after this moment were not in this run's plan (see
        #: :meth:`SyncState.mark_in_flight`).
        self.since: datetime | None = None
        self._buffer: list[pd.DataFrame] = []
        self._buffered = 0
        self._thread: ThreadPoolExecutor | None = None
        #: Batches handed to the sending thread, oldest first.
        self._queued: deque[Future[None]] = deque()
        #: Batches handed to the sending thread and not marked in flight yet, oldest first.
        self._unmarked: deque[InFlightBatch] = deque()

    def add(self, contacts: pd.DataFrame) -> None:
        """Queue prepared contacts; full batches leave at once."""
        self._buffer.append(contacts)
        self._buffered += len(contacts)
        self.flush(final=False)

    def flush(self, *, final: bool) -> None:
        """Send every full batch (``final``: the rest too)."""
        size = self.batch_size
        while self._buffered >= size or (final and self._buffered > 0):
            merged = pd.concat(self._buffer, ignore_index=True) if len(self._buffer) > 1 else self._buffer[0]
            batch, rest = merged.iloc[:size], merged.iloc[size:]
            self._buffer = [rest] if len(rest) else []
            self._buffered = len(rest)
            self._send(batch.reset_index(drop=True))

    def _send(self, batch: pd.DataFrame) -> None:
        """Hand the batch to the sending thread; wait for the batch before it."""
        keys = batch["key"].tolist()
        in_flight = InFlightBatch(keys)
        resent = frozenset(self.resent.intersection(keys))
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sequences-push")
        self._unmarked.append(in_flight)
        self._queued.append(self._thread.submit(self._mark_and_push, in_flight, batch, resent))
        while len(self._queued) > 1:
            self._settle_oldest()

    def _mark_and_push(self, in_flight: InFlightBatch, batch: pd.DataFrame, resent: frozenset[str]) -> None:
        """In the sending thread: mark the batch's keys in flight, unless recording the batch
        before it did (one commit for both), then send and record what is left."""
        if self.lease is not None and self.lease.lost:
            raise SyncAbortedError(
                "this run's lease on the sequence expired (its heartbeat could not reach the sync "
                "state), so another run may be syncing it: stopped before sending more"
            )
        if not in_flight.marked:
            with contextlib.suppress(ValueError):
                self._unmarked.remove(in_flight)
            in_flight.batch_id, in_flight.taken = self.store.mark_in_flight(
                in_flight.keys, self.run_id, since=self.since
            )
            in_flight.marked = True
        if in_flight.taken:
            # Another shard of this run marked them since they were planned: its result has them.
            batch = batch[~batch["key"].isin(in_flight.taken)].reset_index(drop=True)
            self.recorder.held_elsewhere(len(in_flight.taken))
        if batch.empty:
            return
        self.push_and_record(batch, in_flight.batch_id, resent)

    def push_and_record(self, batch: pd.DataFrame, batch_id: str | None, resent: frozenset[str]) -> None:
        """In the sending thread: one batch, sent and recorded."""
        outcome = self.pusher.push(batch, resent_keys=resent)
        keys = batch["key"].tolist()
        fingerprints = dict(zip(keys, batch["fingerprint"].tolist(), strict=True))
        if any(not identity for identity in outcome.pending.values()):
            # Only what the adapter left out: its own are already compact, and copies of them
            # would be held for every pending key of the run.
            for key, row in zip(keys, batch.to_dict("records"), strict=True):
                if key in outcome.pending and not outcome.pending[key]:
                    outcome.pending[key] = self.adapter.identity(row) or {}
        # Stored in the outcome's commit: a crash before it leaves the batch in flight, and
        # the retry prepares (and claims) its rows again.
        claims = self.identities.claims_of(batch) if self.identities is not None else None
        following = None
        if batch_id is not None:
            # A run that stops empties the queue from the main thread: never fail here then.
            with contextlib.suppress(IndexError):
                following = self._unmarked.popleft()
        marked = self.recorder.record(
            outcome,
            fingerprints,
            batch_id=batch_id,
            sent=True,
            claims=claims,
            mark_next=following.keys if following is not None else None,
            since=self.since,
        )
        if following is not None:
            # The next batch waits in the sending thread: it was marked in this commit.
            following.batch_id, following.taken = marked
            following.marked = True

    def read_back_first(self, contacts: pd.DataFrame, check: set[str]) -> pd.DataFrame:
        """The worker died with these keys' batch in flight: read it back once. Keys found were
        applied and are added, never sent again; keys not found never reached the service, so
        sending them now is what a run without the crash did."""
        doubtful = contacts[contacts["key"].isin(check)]
        if doubtful.empty:
            return contacts
        identities = {row["key"]: self.adapter.identity(row) or {} for row in doubtful.to_dict("records")}
        found = self.adapter.confirm(PendingSet.of(identities), timeout=0).all_added()
        fingerprints = dict(zip(doubtful["key"], doubtful["fingerprint"], strict=True))
        self.recorder.record(BatchOutcome(added=found), fingerprints)
        return contacts[~contacts["key"].isin(found)]

    def _settle_oldest(self) -> None:
        future = self._queued.popleft()
        try:
            future.result()
        except BaseException:
            self.drain(quietly=True)
            raise
        self.on_settled()

    def drain(self, *, quietly: bool = False) -> None:
        """Wait for every batch handed to the sending thread.

        ``quietly``: a run that is failing anyway lets the batch being sent finish (it is
        recorded), does not send the others, and drops later errors: keys not recorded stay
        in flight, which a retry handles.
        """
        if not quietly:
            while self._queued:
                self._settle_oldest()
            return
        self._unmarked.clear()  # batches not started are not marked in flight by the one sending
        for future in self._queued:
            future.cancel()  # not started yet: never sent
        for future in self._queued:
            if not future.cancelled() and future.exception() is not None:
                log.debug("A batch failed while the run stopped", exc_info=future.exception())
        self._queued.clear()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
