"""One run of a sync: source chunks -> prepare -> plan -> push -> record.

Plain Python and pandas: the operators wire a source, an adapter and a state together and
call :meth:`SyncRun.run`; benchmarks and tests can do the same without Airflow.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd

from airflow_provider_sequences.exceptions import SyncAbortedError
from airflow_provider_sequences.sync.contract import BatchOutcome, Identity, ServiceAdapter
from airflow_provider_sequences.sync.hashes import HashIndex, hash_strings
from airflow_provider_sequences.sync.identities import SharedIdentities
from airflow_provider_sequences.sync.lease import ScopeLease
from airflow_provider_sequences.sync.masking import mask_text
from airflow_provider_sequences.sync.outcomes import (
    ENROLLMENT_UNCONFIRMED,
    MISSING_KEY,
    REQUEST_FAILED,
    RETRY_WHEN_CHANGED,
    SyncResult,
)
from airflow_provider_sequences.sync.prepare import PrepareSpec, check_columns, prepare_chunk
from airflow_provider_sequences.sync.push import Pusher
from airflow_provider_sequences.sync.state import (
    ADDED,
    NOT_PROCESSED,
    PENDING,
    SENDING,
    AddedKeys,
    Claims,
    KeyOutcome,
    PendingKeys,
    SyncState,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncOptions:
    """How a run behaves.

    :param batch_size: contacts per request (at most the service's maximum).
    :param dry_run: plan only: no write request and nothing written to the state.
    :param incremental: skip keys an earlier run enrolled; retry earlier failures that may
        succeed now (up to ``max_attempts`` sends), and data rejections only when the data changed.
    :param full_resync: send every key whatever the state says (outcomes are still recorded).
    :param max_attempts: sends of one key across runs before a transient failure is final.
    :param enrollment_timeout: seconds to wait for a service that confirms in the background.
    :param max_failed_batches: consecutive failed batches before the run stops sending.
    :param progress_interval: seconds between progress lines in the log.
    :param mask_values: mask emails and phones in the details of not-processed keys, in the
        result and in the state (see :mod:`~airflow_provider_sequences.sync.masking`).
    """

    batch_size: int
    dry_run: bool = False
    incremental: bool = True
    full_resync: bool = False
    max_attempts: int = 5
    enrollment_timeout: float = 600.0
    max_failed_batches: int = 3
    progress_interval: float = 30.0
    mask_values: bool = False


@dataclass
class _Progress:
    started: float = field(default_factory=time.monotonic)
    last_log: float = field(default_factory=time.monotonic)
    batches: int = 0


class SyncRun:
    """One pass of a source through prepare, plan, push and record.

    :param adapter: the service adapter (already past :meth:`~ServiceAdapter.preflight`).
    :param spec: how source columns become contact fields.
    :param state: the sync state of this sequence, or ``None`` for a dry run without one.
    :param run_id: this run's id (the Airflow run id): a retried task with the same id resumes.
    :param options: see :class:`SyncOptions`.
    :param total_rows: the number of source rows when known cheaply, for progress lines.
    """

    def __init__(
        self,
        adapter: ServiceAdapter,
        spec: PrepareSpec,
        state: SyncState | None,
        run_id: str,
        options: SyncOptions,
        *,
        total_rows: int | None = None,
        logger: logging.Logger | None = None,
        lease: ScopeLease | None = None,
    ) -> None:
        self.adapter = adapter
        self.spec = spec
        self.state = state
        self.run_id = run_id
        self.options = options
        self.total_rows = total_rows
        self.log = logger or log
        self.pusher = Pusher(adapter, max_failed_batches=options.max_failed_batches)
        self.result = SyncResult()
        self.result.stats.update(unchanged=0, resumed=0)
        self.would_send: list[str] = []
        #: Keys accepted but not confirmed yet, with what identifies them in a read-back. With
        #: a state only the keys an earlier run left pending: those of this run's writes are in
        #: the state (:meth:`confirm` reads them there), not held here for the whole run.
        self.pending: dict[str, Identity] = {}
        self._pending_in_state = 0
        #: Hashes of the keys read so far (see :mod:`~airflow_provider_sequences.sync.hashes`).
        self._seen = HashIndex()
        self._buffer: list[pd.DataFrame] = []
        self._buffered = 0
        self._resent: set[str] = set()
        self._progress = _Progress()
        self._requests_before = adapter.request_counts
        #: Requests made before the run (reading the sequence, its steps, the channels): not
        #: reads or writes of the run, but the service counts them against the budget too.
        self.preflight_requests = 0
        self._sender: ThreadPoolExecutor | None = None
        self._left_in_flight: dict[str, list[str]] = {}
        self._left_in_flight_keys: set[str] = set()
        #: Outcomes so far, for progress lines (with a state, keys are not kept in memory).
        self._counts: Counter[str] = Counter()
        self._in_flight: deque[Future[None]] = deque()
        #: Batches handed to the sending thread and not yet marked in flight, oldest first.
        self._unmarked: deque[_Mark] = deque()
        # Outcomes are recorded by the sending thread and by this one (rejections).
        self._lock = threading.Lock()
        self._identities = self._shared_identities()
        #: The run's lease on its scope (taken by :meth:`run` when not held yet).
        self.lease = lease
        #: Keys other runs record after this moment were not in this run's plan (see
        #: :meth:`SyncState.claim_batch`).
        self._since: datetime | None = None

    @property
    def writes_state(self) -> bool:
        return self.state is not None and not self.options.dry_run

    # -- the run ------------------------------------------------------------------------------

    def run(self, chunks: Iterable[pd.DataFrame]) -> SyncResult:
        """Read every chunk, send what the plan says, and return the run's result.

        Pending contacts (services that confirm in the background) are left in
        :attr:`pending` for :meth:`confirm`, so the wait can happen elsewhere (a trigger).
        """
        first_row = 0
        if self.lease is not None and self.writes_state and not self.lease.held:
            self.lease.acquire()
        self._since = (
            self.lease.acquired_at
            if self.lease is not None and self.lease.acquired_at is not None
            else datetime.now(timezone.utc)
        )
        # Batches this run must resolve (an earlier attempt's, or a dead run's, now this
        # run's), read before it marks any of its own; live runs' batches are theirs.
        if self.state is None:
            self._left_in_flight = {}
        elif self.writes_state:
            self._left_in_flight = self.state.adopt_in_flight(self.run_id)
        else:
            self._left_in_flight = self.state.in_flight()
        self._left_in_flight_keys = {key for keys in self._left_in_flight.values() for key in keys}
        if not self.options.dry_run:
            # Without a record of this sequence, contacts already in it are someone else's doing
            # (or a lost state's): the adapter may read them before sending anything.
            self.adapter.start(fresh_state=self.state is None or self.state.is_empty())
        try:
            for chunk in chunks:
                # An upstream task that returned no rows hands over a frame without columns: an
                # empty night, not a source that lacks the mapped columns.
                if first_row == 0 and not (chunk.empty and len(chunk.columns) == 0):
                    check_columns(list(chunk.columns), self.spec)
                self._take_chunk(chunk, first_row)
                first_row += len(chunk)
                self.result.stats["rows"] = first_row
                self._log_progress()
            self._flush(final=True)
            self._drain()
            if self.writes_state and self._left_in_flight:
                # Their keys were planned like any other this run: enrolled, refused, sent again
                # or read back. Keys absent from tonight's rows stay in flight for a later run.
                assert self.state is not None
                self.state.settle_in_flight(
                    self._left_in_flight,
                    self.run_id,
                    unresolved=self._unseen(self._left_in_flight_keys),
                )
            self._seen = HashIndex()  # a hash per key read: free it before the result is built
        except BaseException:
            # Whatever stopped the run, what the service already answered is recorded.
            self._drain(quietly=True)
            raise
        finally:
            self._close_sender()
        self._count_requests()
        return self.result

    def release(self) -> None:
        """End the run's lease on its scope, if it holds one."""
        if self.lease is not None:
            self.lease.release()

    def _take_chunk(self, chunk: pd.DataFrame, first_row: int) -> None:
        if chunk.empty:
            return
        chunk = chunk.reset_index(drop=True)
        fingerprints = _fingerprints(chunk, self.spec)
        # Keys first (one column): duplicates and the plan are settled before the per-row
        # checks, so an unchanged night costs little CPU.
        keyed = prepare_chunk(chunk, self._key_spec, first_row=first_row)
        keys = np.empty(len(chunk), dtype=object)
        keys[keyed.contacts["row"].to_numpy(dtype="int64") - first_row] = keyed.contacts["key"].to_numpy()
        if keyed.rejected:
            keys[np.asarray(keyed.rejected_rows, dtype="int64") - first_row] = [
                k for k, _, _ in keyed.rejected
            ]

        # First occurrence of a key wins, across chunks, whether it is accepted or not.
        hashes = hash_strings(keys)
        earlier, _ = self._seen.lookup(hashes)
        first = ~pd.Series(hashes).duplicated().to_numpy() & ~earlier
        self.result.stats["duplicates"] += int((~first).sum())
        self._seen.add(hashes[first])

        planned = pd.DataFrame({"key": keys[first], "fingerprint": fingerprints[first]})
        handle, check = self._plan(planned)
        # A set lookup: numpy's isin sorts object arrays, which cost most of a large run.
        todo = handle | check
        wanted = np.flatnonzero(
            first & np.fromiter((key in todo for key in keys), dtype=bool, count=len(keys))
        )
        if not len(wanted):
            return
        # The key pass names rows without a key by their source position; keep its words.
        key_details = {
            row - first_row: detail
            for (_, reason, detail), row in zip(keyed.rejected, keyed.rejected_rows, strict=True)
            if reason == MISSING_KEY
        }
        contacts, rejected = self._prepare(
            chunk.iloc[wanted], wanted, keys, fingerprints, first_row, key_details
        )
        if self._identities is not None and not contacts.empty:
            contacts, shared = self._identities.claim(contacts)
            if len(shared):
                rejected = pd.concat([rejected, shared], ignore_index=True) if len(rejected) else shared
        if check:
            self._drain()  # the adapter is used by one thread at a time
            contacts = self._read_back_first(contacts, check)
        self._reject(rejected)
        if contacts.empty:
            return
        if self.options.dry_run:
            self.would_send.extend(contacts["key"].tolist())
            return
        self._buffer.append(contacts)
        self._buffered += len(contacts)
        self._flush(final=False)

    def _unseen(self, keys: set[str]) -> list[str]:
        """The keys no row of this run had, sorted."""
        ordered = sorted(keys)
        found, _ = self._seen.lookup(hash_strings(ordered))
        return [key for key, seen in zip(ordered, found, strict=True) if not seen]

    def _shared_identities(self) -> SharedIdentities | None:
        """Phones, emails and ids used so far, for services that merge contacts sharing one."""
        # Keys are unique in a run: an external id that is the key needs no claim.
        fields = [
            name
            for name in self.adapter.match_fields
            if not (name == "external_id" and self.spec.column_map.get(self.spec.key_column) == name)
        ]
        if not fields:
            return None
        return SharedIdentities(
            fields,
            service=self.adapter.rules.service,
            matched_by=self.adapter.match_fields,
            store=self.state,
        )

    @cached_property
    def _key_spec(self) -> PrepareSpec:
        """The spec reduced to the key column, with nothing required."""
        spec = self.spec
        column_map = {c: f for c, f in spec.column_map.items() if c == spec.key_column}
        return replace(spec, column_map=column_map, rules=replace(spec.rules, required=frozenset()))

    def _prepare(
        self,
        rows: pd.DataFrame,
        positions: np.ndarray[Any, Any],
        keys: np.ndarray[Any, Any],
        fingerprints: np.ndarray[Any, Any],
        first_row: int,
        key_details: dict[int, str],
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The full checks on the rows to handle; (contacts to send, rejections)."""
        prepared = prepare_chunk(rows.reset_index(drop=True), self.spec, first_row=0)
        contacts = prepared.contacts
        local = contacts["row"].to_numpy(dtype="int64")
        contacts["row"] = positions[local] + first_row
        contacts["key"] = keys[positions[local]]
        contacts["fingerprint"] = fingerprints[positions[local]]
        rejected_local = np.asarray(prepared.rejected_rows, dtype="int64")
        chunk_rows = positions[rejected_local].tolist() if len(rejected_local) else []
        rejected = pd.DataFrame(
            {
                # The key pass named the rows (``row:<n>`` counts from the source's start).
                "key": keys[positions[rejected_local]] if len(rejected_local) else [],
                "reason": [reason for _, reason, _ in prepared.rejected],
                # ``rows`` is a subset of the chunk: a detail naming a row must name its source row.
                "detail": [
                    key_details.get(row, detail) if reason == MISSING_KEY else detail
                    for (_, reason, detail), row in zip(prepared.rejected, chunk_rows, strict=True)
                ],
                "row": positions[rejected_local] + first_row if len(rejected_local) else [],
                "fingerprint": fingerprints[positions[rejected_local]] if len(rejected_local) else [],
            }
        )
        return contacts, rejected

    # -- plan ---------------------------------------------------------------------------------

    def _plan(self, planned: pd.DataFrame) -> tuple[set[str], set[str]]:
        """Decide, from the state, what each key needs: ``(handle, check)``.

        ``handle``: keys to check and send (or reject) in this run. ``check``: keys whose batch
        may have been applied when a worker died, where sending again is not safe; they are
        read back first and sent only if not found. Everything else is settled here: keys an
        earlier run enrolled are ``unchanged``; data rejections whose data did not change, and
        transient failures out of attempts, are reported again without sending; keys
        acknowledged by an earlier attempt of this same run are already part of its result.
        """
        everyone = set(planned["key"].tolist())
        if self.state is None or planned.empty:
            return everyone, set()
        flying = self._left_in_flight_keys
        known = self.state.lookup(planned["key"].tolist())
        if known.empty and flying.isdisjoint(everyone):
            return everyone, set()
        merged = planned.merge(
            known, how="left", left_on="key", right_on="contact_key", suffixes=("", "_state")
        )
        status = merged["status"]
        same_run = merged["last_run_id"] == self.run_id
        resync = self.options.full_resync or not self.options.incremental
        data_reason = merged["reason"].isin(list(RETRY_WHEN_CHANGED))
        # Settled by an earlier attempt of this run: enrolled, or refused for good. A transient
        # failure is not settled: the task's retry is there to try it again.
        settled = (status == ADDED) | ((status == NOT_PROCESSED) & data_reason)
        attempts = pd.to_numeric(merged["attempts"], errors="coerce").fillna(0)
        in_flight = np.fromiter((key in flying for key in merged["key"]), dtype=bool, count=len(merged))
        # A key another live run (a sibling shard) recorded last is that run's to finish: its
        # result reports it, and carrying or rejecting it here would take it from that result.
        siblings = self.state.live_runs() - {self.run_id} if self.lease is not None else set()
        elsewhere = merged["last_run_id"].isin(list(siblings)).to_numpy() if siblings else None
        # A key the state records added is enrolled, whatever batch of it was left in flight
        # (a re-send that died, or a row an earlier version left behind): never sent again.
        enrolled = ((status == ADDED) & (not resync)).to_numpy()
        decision = np.select(
            [
                (same_run & settled).to_numpy() & enrolled,
                enrolled & ~same_run.to_numpy(),
                in_flight | (status == SENDING).to_numpy(),
                status.isna(),
                same_run & settled,
                status == PENDING,
                pd.Series(resync, index=merged.index),
                status == ADDED,
                data_reason & (merged["fingerprint_state"] == merged["fingerprint"]),
                ~data_reason & (attempts >= self.options.max_attempts),
            ],
            [
                "done",
                "unchanged",
                "sending",
                "handle",
                "done",
                "pending",
                "handle",
                "unchanged",
                "again",
                "given_up",
            ],
            default="handle",
        )
        if elsewhere is not None and elsewhere.any():
            decision = np.where(elsewhere, "elsewhere", decision)
            self.result.stats["claimed_by_other_shards"] += int(elsewhere.sum())
            self.result.stats["unchanged"] += int(elsewhere.sum())
        if resync:
            # Keys an earlier run enrolled: if the service answers "already in the sequence",
            # that is what they are, not a failure to retry on every later run.
            self._resent.update(merged.loc[(decision == "handle") & (status == ADDED).to_numpy(), "key"])
        self.result.stats["unchanged"] += int((decision == "unchanged").sum())
        self.result.stats["resumed"] += int((decision == "done").sum())

        # A request that failed after retries may still have been applied (its answer lost):
        # like a batch a dead worker left in flight, its keys may be enrolled already.
        failed_send = (decision == "handle") & (
            (status == NOT_PROCESSED) & (merged["reason"] == REQUEST_FAILED)
        )
        decision = np.where(failed_send.to_numpy(), "sending", decision)
        sending = merged.loc[decision == "sending", "key"].tolist()
        check: set[str] = set()
        if sending:
            if self.adapter.resend_is_safe:
                self._resent.update(sending)
                decision = np.where(decision == "sending", "handle", decision)
            else:
                check = set(sending)
        carried = merged.loc[decision == "pending", "key"].tolist()
        self.pending.update({key: {} for key in carried})
        if carried and self.writes_state:
            # Still unconfirmed from an earlier run: recorded under this run too, so that its
            # result accounts for them even when this run does not read them back either.
            assert self.state is not None
            self.state.record([KeyOutcome(key, PENDING) for key in carried], self.run_id)
        again = merged[(decision == "again") | (decision == "given_up")]
        if len(again):
            given_up = decision[(decision == "again") | (decision == "given_up")] == "given_up"
            details = [
                f"{_first_detail(detail)} (gave up after {int(n)} attempts)"
                if gave_up
                else f"{_first_detail(detail)} (unchanged since then)"
                for detail, n, gave_up in zip(again["detail"], again["attempts"], given_up, strict=True)
            ]
            self._reject(
                pd.DataFrame(
                    {
                        "key": again["key"],
                        "reason": again["reason"],
                        "detail": details,
                        "fingerprint": again["fingerprint"],
                    }
                )
            )
        return set(merged.loc[decision == "handle", "key"].tolist()), check

    def _read_back_first(self, contacts: pd.DataFrame, check: set[str]) -> pd.DataFrame:
        """The worker died with these keys' batch in flight: read it back once. Keys found were
        applied and are added, never sent again; keys not found never reached the service, so
        sending them now is what a run without the crash did."""
        doubtful = contacts[contacts["key"].isin(check)]
        if doubtful.empty:
            return contacts
        identities = {row["key"]: self.adapter.identity(row) or {} for row in doubtful.to_dict("records")}
        found = self.adapter.confirm(identities, timeout=0).added
        fingerprints = dict(zip(doubtful["key"], doubtful["fingerprint"], strict=True))
        self._record(BatchOutcome(added=found), fingerprints)
        return contacts[~contacts["key"].isin(found)]

    # -- push and record ----------------------------------------------------------------------

    def _flush(self, *, final: bool) -> None:
        size = self.options.batch_size
        while self._buffered >= size or (final and self._buffered > 0):
            merged = pd.concat(self._buffer, ignore_index=True) if len(self._buffer) > 1 else self._buffer[0]
            batch, rest = merged.iloc[:size], merged.iloc[size:]
            self._buffer = [rest] if len(rest) else []
            self._buffered = len(rest)
            self._send(batch.reset_index(drop=True))

    def _send(self, batch: pd.DataFrame) -> None:
        """Hand the batch to the sending thread, which marks it as being sent (in the commit that
        records the batch before it, when that one is answered after this call), sends it and
        records its outcome; wait for the batch before it.

        One batch is in the service's hands while this thread prepares the next, so the run
        costs the longer of the two, not their sum. Keys are marked ``sending`` before their
        request can leave, and an answered batch is recorded at once, in the sending thread,
        so a crash finds at most the batch whose answer it interrupted in flight.
        """
        keys = batch["key"].tolist()
        mark = _Mark(keys)
        resent = frozenset(self._resent.intersection(keys))
        if self._sender is None:
            self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sequences-push")
        if self.state is not None:
            self._unmarked.append(mark)
        self._in_flight.append(self._sender.submit(self._mark_and_push, mark, batch, resent))
        while len(self._in_flight) > 1:
            self._settle_oldest()

    def _mark_and_push(self, mark: _Mark, batch: pd.DataFrame, resent: frozenset[str]) -> None:
        """In the sending thread: claim the batch's keys (mark them in flight), unless recording
        the batch before it did (one commit for both), then send and record what is left."""
        if self.lease is not None and self.lease.lost:
            raise SyncAbortedError(
                "this run's lease on the sequence expired (its heartbeat could not reach the sync "
                "state), so another run may be syncing it: stopped before sending more"
            )
        if self.state is not None and not mark.claimed:
            with contextlib.suppress(ValueError):
                self._unmarked.remove(mark)
            mark.batch_id, mark.taken = self.state.claim_batch(mark.keys, self.run_id, since=self._since)
            mark.claimed = True
        if mark.taken:
            # Another shard of this run claimed them since they were planned: its result has them.
            batch = batch[~batch["key"].isin(mark.taken)].reset_index(drop=True)
            with self._lock:
                self.result.stats["unchanged"] += len(mark.taken)
                self.result.stats["claimed_by_other_shards"] += len(mark.taken)
        if batch.empty:
            return
        self._push_and_record(batch, mark.batch_id, resent)

    def _push_and_record(self, batch: pd.DataFrame, batch_id: str | None, resent: frozenset[str]) -> None:
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
        claims = self._identities.claims_of(batch) if self._identities is not None else None
        self._record(outcome, fingerprints, batch_id=batch_id, sent=True, claims=claims)

    def _settle_oldest(self) -> None:
        future = self._in_flight.popleft()
        try:
            future.result()
        except BaseException:
            self._drain(quietly=True)
            raise
        self._progress.batches += 1
        self._log_progress()

    def _drain(self, *, quietly: bool = False) -> None:
        """Wait for every batch handed to the sending thread.

        ``quietly``: a run that is failing anyway lets the batch being sent finish (it is
        recorded), does not send the others, and drops later errors: keys not recorded stay
        ``sending``, which a retry handles.
        """
        if not quietly:
            while self._in_flight:
                self._settle_oldest()
            return
        self._unmarked.clear()  # batches not started are not marked in flight by the one sending
        for future in self._in_flight:
            future.cancel()  # not started yet: never sent
        for future in self._in_flight:
            if not future.cancelled() and future.exception() is not None:
                log.debug("A batch failed while the run stopped", exc_info=future.exception())
        self._in_flight.clear()

    def _close_sender(self) -> None:
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None

    def _record(
        self,
        outcome: BatchOutcome,
        fingerprints: dict[str, str],
        *,
        batch_id: str | None = None,
        sent: bool = False,
        claims: Claims | None = None,
    ) -> None:
        """Record a batch's outcomes (``sent``: they answer a send, which counts as an attempt;
        ``claims``: the values it sent, see :class:`SharedIdentities`)."""
        # Added and pending keys (most of them) become rows without a KeyOutcome each.
        added = AddedKeys(outcome.added, fingerprints, sent)
        pending = PendingKeys(outcome.pending, fingerprints, sent)
        outcomes = [
            KeyOutcome(
                key, NOT_PROCESSED, reason, self._shown(detail), fingerprint=fingerprints.get(key), sent=sent
            )
            for key, (reason, detail) in outcome.failed.items()
        ]
        if self.writes_state:
            # The state holds the outcomes and :meth:`finish` reads them from there: keeping a
            # second copy of every key here would double the memory of a large run.
            assert self.state is not None
            following = None
            if sent and batch_id is not None:
                # A run that stops empties the queue from the main thread: never fail here then.
                with contextlib.suppress(IndexError):
                    following = self._unmarked.popleft()
            if following is not None:
                # The next batch waits in the sending thread: mark it in this commit.
                following.batch_id, following.taken = self.state.record_and_mark(
                    outcomes,
                    self.run_id,
                    batch_id=batch_id,
                    keys=following.keys,
                    added=added,
                    pending=pending,
                    claims=claims,
                    since=self._since,
                )
                following.claimed = True
            else:
                self.state.record(
                    outcomes, self.run_id, batch_id=batch_id, added=added, pending=pending, claims=claims
                )
        with self._lock:
            if self.writes_state:
                self._pending_in_state += len(outcome.pending)
            else:
                self.pending.update(outcome.pending)
            self._counts["added"] += len(outcome.added)
            self._counts["not_processed"] += len(outcome.failed)
            if self.writes_state:
                return
            for key in outcome.added:
                self.result.add(key)
            for key, (reason, detail) in outcome.failed.items():
                self.result.reject(key, reason, self._shown(detail))

    def _reject(self, rejected: pd.DataFrame) -> None:
        if rejected.empty:
            return
        rows = list(
            zip(
                rejected["key"].tolist(),
                rejected["reason"].tolist(),
                [self._shown(detail) for detail in rejected["detail"].tolist()],
                rejected["fingerprint"].tolist(),
                strict=True,
            )
        )
        if self.writes_state:
            assert self.state is not None
            self.state.record(
                [KeyOutcome(k, NOT_PROCESSED, r, d, fingerprint=f) for k, r, d, f in rows], self.run_id
            )
        with self._lock:
            self._counts["not_processed"] += len(rows)
            if self.writes_state:
                return
            for key, reason, detail, _ in rows:
                self.result.reject(key, reason, detail)

    def _shown(self, detail: str) -> str:
        """A detail as the result and the state hold it: masked when the options say so."""
        return mask_text(detail) if self.options.mask_values and detail else detail

    # -- confirm ------------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        """How many keys are accepted but not confirmed yet."""
        return len(self.pending) + self._pending_in_state

    def confirm(self, timeout: float | None = None) -> None:
        """Resolve pending keys by reading the service back (Whippy) and record the answers.

        With a state, the keys are this run's pending ones there: those it sent and those an
        earlier run left (:meth:`_plan` records them under this run), with their identities.
        """
        if self.writes_state:
            assert self.state is not None
            pending = self.state.pending_identities(self.run_id)
        else:
            pending = self.pending
        self.pending, self._pending_in_state = {}, 0
        if not pending:
            return
        self.log.info("Waiting for %s to confirm %d contacts", self.adapter.service, len(pending))
        expected = len(pending)
        outcome = self.adapter.confirm(pending, timeout=timeout or self.options.enrollment_timeout)
        del pending
        if self.writes_state and self._only_statuses(outcome, expected):
            assert self.state is not None
            # Failures first: then the run's pending rows are exactly the keys found, and one
            # update records them (a row per key cost most of the confirm at a million keys).
            for part in _slices(BatchOutcome(failed=outcome.failed), CONFIRM_RECORD_SLICE):
                self._record(part, {})
            outcome.failed = {}
            if self.state.promote_pending(self.run_id, len(outcome.added)):
                with self._lock:
                    self._counts["added"] += len(outcome.added)
                outcome.added = {}
        # In slices: the rows of a million outcomes at once would cost more than the run's keys.
        for part in _slices(outcome, CONFIRM_RECORD_SLICE):
            self._record(part, {})
        self._count_requests()

    @staticmethod
    def _only_statuses(outcome: BatchOutcome, expected: int) -> bool:
        """Whether a read-back settles each of the ``expected`` pending keys with a status alone
        (added without a contact id, or failed)."""
        return (
            not outcome.pending
            and len(outcome.added) + len(outcome.failed) == expected
            and all(contact_id is None for contact_id in outcome.added.values())
        )

    def finish(self) -> SyncResult:
        """The run's result. With a state, it is read back from it, so a resumed or deferred
        task reports the whole run, not only its last attempt."""
        self._count_requests()
        if not self.writes_state:
            if self.options.dry_run:
                self.result.stats["would_send"] = len(self.would_send)
                for key in self.pending:  # left pending by an earlier run; a dry run reads nothing back
                    self.result.reject(
                        key,
                        ENROLLMENT_UNCONFIRMED,
                        f"{self.adapter.service} accepted this contact in an earlier run; a real run reads "
                        "its enrolment back",
                    )
            return self.result
        assert self.state is not None
        result = SyncResult(stats=self.result.stats)
        for key, status, reason, detail in self.state.run_outcomes(self.run_id):
            if status == ADDED:
                result.add(key)
            elif status == NOT_PROCESSED:
                result.reject(key, reason or "", detail or "")
            else:
                result.reject(
                    key,
                    ENROLLMENT_UNCONFIRMED,
                    f"{self.adapter.service} accepted this contact but its enrolment was not read back "
                    "in this run; the next run confirms it",
                )
        return result

    # -- reporting ----------------------------------------------------------------------------

    def _count_requests(self) -> None:
        writes, reads = self.adapter.request_counts
        self.result.stats["write_requests"] = writes - self._requests_before[0]
        self.result.stats["read_requests"] = reads - self._requests_before[1]
        self.result.stats["requests"] = (
            self.result.stats["write_requests"] + self.result.stats["read_requests"] + self.preflight_requests
        )
        self.result.stats["split_batches"] = self.pusher.splits

    def _log_progress(self) -> None:
        now = time.monotonic()
        if now - self._progress.last_log < self.options.progress_interval:
            return
        self._progress.last_log = now
        self._count_requests()
        rows = self.result.stats["rows"]
        elapsed = max(now - self._progress.started, 1e-9)
        total = f" of {self.total_rows:,}" if self.total_rows else ""
        self.log.info(
            "%s: %s%s rows read (%.0f rows/s); %d batches sent, %d added, %d not processed, "
            "%d unchanged, %d requests",
            self.adapter.service,
            f"{rows:,}",
            total,
            rows / elapsed,
            self._progress.batches,
            self._counts["added"],
            self._counts["not_processed"],
            self.result.stats["unchanged"],
            self.result.stats["requests"],
        )


#: Outcomes of a read-back recorded per state write.
CONFIRM_RECORD_SLICE = 20_000


def _slices(outcome: BatchOutcome, size: int) -> Iterator[BatchOutcome]:
    """The outcome in parts of at most ``size`` keys each."""
    for name in ("added", "failed", "pending"):
        items = iter(getattr(outcome, name).items())
        while part := dict(islice(items, size)):
            yield BatchOutcome(**{name: part})


@dataclass(eq=False)
class _Mark:
    """A batch's keys and, once claimed in the state, its batch id (``None`` when every key
    was held by another shard) and the keys held elsewhere."""

    keys: list[str]
    batch_id: str | None = None
    claimed: bool = False
    taken: set[str] = field(default_factory=set)


#: What :meth:`SyncRun._plan` appends to a reason's detail when it reports the reason again.
_REPEAT_NOTES = re.compile(r"(?: \((?:unchanged since then|gave up after \d+ attempts)\))+$")


def _first_detail(detail: Any) -> str:
    """A detail as first recorded, without the notes of earlier runs that reported it again."""
    return _REPEAT_NOTES.sub("", detail) if isinstance(detail, str) else ""


def _fingerprints(chunk: pd.DataFrame, spec: PrepareSpec) -> Any:
    """A stable hash per row of the mapped source values: a changed row has a new one."""
    columns = sorted({spec.key_column, *spec.column_map, *([spec.id_column] if spec.id_column else [])})
    columns = [c for c in columns if c in chunk.columns]
    text = chunk[columns].astype("string").fillna("")
    hashes = pd.util.hash_pandas_object(text, index=False).to_numpy()
    return pd.Series(hashes).map("{:016x}".format).to_numpy()
