"""One run of a sync: source chunks -> prepare -> plan -> push -> record.

Plain Python and pandas: the operators wire a source, an adapter and a state together and
call :meth:`SyncRun.run`; benchmarks and tests can do the same without Airflow. The stages are
modules of their own (:mod:`.chunk` and :mod:`.prepare`, :mod:`.plan`, :mod:`.send`,
:mod:`.record`); this one runs them in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from airflow_provider_sequences.sync import chunk as chunks
from airflow_provider_sequences.sync.contract import Identity, ServiceAdapter
from airflow_provider_sequences.sync.enrolled import EnrolledKeys
from airflow_provider_sequences.sync.hashes import hash_strings
from airflow_provider_sequences.sync.identities import SharedIdentities
from airflow_provider_sequences.sync.keys_read import KeysRead
from airflow_provider_sequences.sync.lease import ScopeLease
from airflow_provider_sequences.sync.options import SyncOptions as SyncOptions
from airflow_provider_sequences.sync.outcomes import SyncResult, retry_when_changed
from airflow_provider_sequences.sync.plan import Planner
from airflow_provider_sequences.sync.prepare import PrepareSpec, check_columns
from airflow_provider_sequences.sync.progress import Progress
from airflow_provider_sequences.sync.record import Recorder
from airflow_provider_sequences.sync.send import Pusher, Sender
from airflow_provider_sequences.sync.state import SyncState
from airflow_provider_sequences.sync.state.null import NullStore, Store

log = logging.getLogger(__name__)


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
        self.log = logger or log
        #: The run's lease on its scope (taken by :meth:`run` when not held yet).
        self.lease = lease
        self.writes_state = state is not None and not options.dry_run
        #: What the run reads (the state, even in a dry run) and what it writes to.
        self._reader: Store = state if state is not None else NullStore()
        self._store: Store = state if state is not None and self.writes_state else NullStore()
        self.recorder = Recorder(
            self._store,
            run_id,
            writes_state=self.writes_state,
            mask_values=options.mask_values,
            service=adapter.display_name,
        )
        self.result = self.recorder.result
        self.planner = Planner(
            self._reader,
            run_id,
            resync=options.full_resync or not options.incremental,
            max_attempts=options.max_attempts,
            resend_is_safe=adapter.resend_is_safe,
            shards=lease is not None,
            retry_when_changed=retry_when_changed(adapter.retry_when_changed),
        )
        self.pusher = Pusher(adapter, max_failed_batches=options.max_failed_batches)
        self.progress = Progress(
            adapter,
            self.recorder,
            self.pusher,
            self.log,
            interval=options.progress_interval,
            total_rows=total_rows,
        )
        self._identities = SharedIdentities.for_run(adapter, spec, state)
        self.sender = Sender(
            adapter,
            self._store,
            self.recorder,
            self.pusher,
            run_id,
            batch_size=options.batch_size,
            lease=lease,
            identities=self._identities,
            on_settled=self.progress.batch_settled,
        )
        self.would_send: list[str] = []
        self._key_spec = chunks.key_spec(spec)
        self._keys_read = KeysRead(
            EnrolledKeys(self._reader, run_id, enabled=not (options.full_resync or not options.incremental))
        )
        #: Batches this run must resolve (left in flight by an earlier attempt or a dead run).
        self._left_in_flight: dict[str, list[str]] = {}
        self._left_in_flight_keys: set[str] = set()

    @property
    def preflight_requests(self) -> int:
        """Requests made before the run (see :class:`Progress`)."""
        return self.progress.preflight_requests

    @preflight_requests.setter
    def preflight_requests(self, count: int) -> None:
        self.progress.preflight_requests = count

    @property
    def pending(self) -> dict[str, Identity]:
        """Keys accepted but not confirmed yet that the run holds (see :class:`Recorder`)."""
        return self.recorder.pending

    @property
    def pending_count(self) -> int:
        """How many keys are accepted but not confirmed yet."""
        return self.recorder.pending_count

    # -- the run ------------------------------------------------------------------------------

    def run(self, chunks_of_rows: Iterable[pd.DataFrame]) -> SyncResult:
        """Read every chunk, send what the plan says, and return the run's result.

        Pending contacts (services that confirm in the background) are left in
        :attr:`pending` for :meth:`confirm`, so the wait can happen elsewhere (a trigger).
        """
        first_row = 0
        if self.lease is not None and self.writes_state and not self.lease.held:
            self.lease.acquire()
        acquired = self.lease.acquired_at if self.lease is not None else None
        self.sender.since = acquired if acquired is not None else datetime.now(timezone.utc)
        # Batches this run must resolve (an earlier attempt's, or a dead run's, now this
        # run's), read before it marks any of its own; live runs' batches are theirs.
        if self.writes_state:
            self._left_in_flight = self._store.adopt_in_flight(self.run_id)
        else:
            self._left_in_flight = self._reader.in_flight()
        self._left_in_flight_keys = {key for keys in self._left_in_flight.values() for key in keys}
        if not self.options.dry_run:
            # Without a record of this sequence, contacts already in it are someone else's doing
            # (or a lost state's): the adapter may read them before sending anything.
            self.adapter.start(fresh_state=self._reader.is_empty())
        try:
            for chunk in chunks_of_rows:
                # An upstream task that returned no rows hands over a frame without columns: an
                # empty night, not a source that lacks the mapped columns.
                if first_row == 0 and not (chunk.empty and len(chunk.columns) == 0):
                    check_columns(list(chunk.columns), self.spec)
                self._take_chunk(chunk, first_row)
                first_row += len(chunk)
                self.result.stats["rows"] = first_row
                self.progress.maybe_log()
            self.sender.flush(final=True)
            self.sender.drain()
            self.recorder.flush()
            if self.writes_state and self._left_in_flight:
                # Their keys were planned like any other this run: enrolled, refused, sent again
                # or read back. Keys absent from tonight's rows stay in flight for a later run.
                unresolved = self._unseen(self._left_in_flight_keys)
                self._store.settle_in_flight(self._left_in_flight, self.run_id, unresolved=unresolved)
            self._keys_read.forget()  # before the result is built
            if self._identities is not None:
                self._identities.forget()  # every batch is sent and its claims stored
        except BaseException:
            # Whatever stopped the run, what the service already answered is recorded.
            self.sender.drain(quietly=True)
            raise
        finally:
            self.sender.close()
        self.progress.count_requests()
        return self.result

    def release(self) -> None:
        """End the run's lease on its scope, if it holds one."""
        if self.lease is not None:
            self.lease.release()

    def _take_chunk(self, chunk: pd.DataFrame, first_row: int) -> None:
        if chunk.empty:
            return
        chunk = chunk.reset_index(drop=True)
        keys, key_details = chunks.key_pass(chunk, self._key_spec, first_row)
        hashes = hash_strings(keys)
        first, enrolled = self._keys_read.take(hashes, first_row + len(chunk))
        self.result.stats["duplicates"] += int((~first).sum())
        if enrolled.any():
            self.result.stats["unchanged"] += int(enrolled.sum())
        planned = np.flatnonzero(first & ~enrolled)
        if not len(planned):
            return
        # Only the rows the plan reads need a fingerprint (an unchanged night's are few).
        fingerprints = np.full(len(chunk), None, dtype=object)
        fingerprints[planned] = chunks.fingerprints(chunk.iloc[planned], self.spec)

        plan = self.planner.plan(
            pd.DataFrame({"key": keys[planned], "fingerprint": fingerprints[planned]}),
            self._left_in_flight_keys,
        )
        self._apply(plan.stats, plan.resent, plan.carried, plan.repeated)
        # A set lookup: numpy's isin sorts object arrays, which cost most of a large run.
        todo = plan.handle | plan.check
        wanted = planned[np.fromiter((key in todo for key in keys[planned]), dtype=bool, count=len(planned))]
        if not len(wanted):
            return
        contacts, rejected = chunks.prepare_rows(
            chunk.iloc[wanted], self.spec, wanted, keys, fingerprints, first_row, key_details
        )
        if self._identities is not None and not contacts.empty:
            contacts, shared = self._identities.claim(contacts)
            if len(shared):
                rejected = pd.concat([rejected, shared], ignore_index=True) if len(rejected) else shared
        if plan.check:
            self.sender.drain()  # the adapter is used by one thread at a time
            contacts = self.sender.read_back_first(contacts, plan.check)
        self.recorder.reject(rejected)
        if contacts.empty:
            return
        if self.options.dry_run:
            self.would_send.extend(contacts["key"].tolist())
            return
        self.sender.add(contacts)

    def _apply(
        self, stats: dict[str, int], resent: list[str], carried: list[str], repeated: pd.DataFrame | None
    ) -> None:
        """What a chunk's plan settles without sending: counters, keys carried or reported again."""
        for name, count in stats.items():
            self.result.stats[name] += count
        self.sender.resent.update(resent)
        self.recorder.carry(carried)
        if repeated is not None:
            self.recorder.reject(repeated)

    def _unseen(self, keys: set[str]) -> list[str]:
        """The keys no row of this run had, sorted."""
        ordered = sorted(keys)
        found = self._keys_read.seen(hash_strings(ordered))
        return [key for key, seen in zip(ordered, found, strict=True) if not seen]

    # -- confirm and finish -------------------------------------------------------------------

    def confirm(self, timeout: float | None = None) -> None:
        """Resolve pending keys by reading the service back (Whippy) and record the answers."""
        timeout = timeout or self.options.enrollment_timeout
        if self.recorder.confirm(self.adapter, timeout, self.log):
            self.progress.count_requests()

    def finish(self) -> SyncResult:
        """The run's result. With a state, it is read back from it, so a resumed or deferred
        task reports the whole run, not only its last attempt."""
        self.progress.count_requests()
        return self.recorder.finish(dry_run=self.options.dry_run, would_send=len(self.would_send))
