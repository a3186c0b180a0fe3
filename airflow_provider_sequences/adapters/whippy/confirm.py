"""The read-back: reading the step until every accepted contact shows, or proving it absent."""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

import numpy as np

from airflow_provider_sequences.adapters.whippy.readback import StepContacts, Waiting
from airflow_provider_sequences.adapters.whippy.resend import LostWrites
from airflow_provider_sequences.adapters.whippy.steps import StepWatch
from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.sync.contract import BatchOutcome
from airflow_provider_sequences.sync.hashes import Array, HashIndex
from airflow_provider_sequences.sync.outcomes import NOT_ENROLLED
from airflow_provider_sequences.sync.pending import PendingSet


class ReadBack(LostWrites):
    """The Whippy adapter's read-back (a mixin of
    :class:`~airflow_provider_sequences.adapters.whippy.adapter.WhippyAdapter`).

    The step's count is read before the run's first write; :meth:`confirm` then reads only the
    step contacts past what it already read (the *tail*: contacts this run created are appended
    there in practice). The API does not document the list's order, so the tail is an
    optimisation only: before a key is declared not enrolled, or a lost batch is sent again,
    one full read of the step proves it absent.
    """

    sequence_id: str
    step_id: str | None
    step_channel: str | None
    poll_interval: float
    stable_polls: int
    waited: float | None
    #: Hashes of the keys this adapter wrote (their step contacts are in the tail), an array
    #: per write: as Python strings a million keys would cost ten times as much, for one
    #: question per :meth:`confirm`.
    _pushed: list[Array]
    _writes: int
    #: The step's count before this adapter's first write, and the offset read up to since.
    _baseline: int | None
    _resumed: bool
    _cursor: int | None
    #: Step contacts read in the tail (current ones) that matched no key, for later calls.
    _seen: StepContacts
    #: (count, offset) of the pages read from offset 0 on while the count stayed the same.
    _span: tuple[int, int] | None

    def step_total(self) -> int:
        """How many contacts the target step holds (one cheap read).

        Before the first write, it is also where this run's step contacts start.
        """
        total: int = self.hook.count_sequence_contacts(self.sequence_id, step_ids=[str(self.step_id)])
        if self._baseline is None and self._writes == 0:
            self._baseline = self._cursor = total
        return total

    def confirm(
        self, pending: PendingSet, *, timeout: float, poll_interval: float | None = None
    ) -> BatchOutcome:
        """Read the step back until every pending key is seen or ``timeout`` seconds pass.

        The keys found are the outcome's ``found`` (see :class:`Waiting`).

        Each poll reads the step past the offset already read: one request when nothing moved,
        and the poll's page is the first of the new contacts when something did. Keys not seen
        are declared ``notEnrolled`` only after the whole step was read while its count stood
        still (see :meth:`_proven`). Batches whose answer was lost are sent again once, in this
        call, when :meth:`_resend_due` says Whippy is done and such a read proves them absent.
        """
        outcome = BatchOutcome()
        waiting = Waiting(pending, self._written)
        waiting.see(self._seen)
        deadline = time.monotonic() + timeout
        base_interval = self.poll_interval if poll_interval is None else poll_interval
        interval = base_interval
        # Keys an earlier attempt or run sent may be anywhere in the step: read it all first.
        # So may this run's, when the step's count before its first write is not known.
        full_first = self._baseline is None or waiting.waits_for_foreign()
        watch = StepWatch(self.stable_polls)
        watch.moved_at = time.monotonic()
        while waiting:
            polled_at = time.monotonic()  # when the count was read (the read may take long)
            try:
                total = self._read(0 if full_first else self._cursor or 0, waiting)
            except SequencesApiError as exc:
                if not exc.is_retryable or time.monotonic() >= deadline:
                    raise
                # A read that failed after the hook's retries is one poll lost, not the run.
                self.hook.log.warning("Reading the step back failed; trying again later: %s", exc)
            else:
                full_first = False
                watch.observe(total, polled_at)
                # Whether Whippy applied any of this run's writes yet.
                working = waiting.found_written > 0
                due = waiting and working and self._resend_due(waiting, watch)
                if due and self._prove(waiting) and self._resend(waiting):
                    watch.unchanged, interval = 0, base_interval
            # The last read is at the deadline, not up to one interval before it.
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            self.hook.log.info(
                "Whippy has confirmed %d of %d contacts; reading again in %.0f s",
                len(pending) - len(waiting),
                len(pending),
                min(interval, left),
            )
            time.sleep(min(interval, left))
            interval = min(interval * 2, 30.0)
        if waiting and not self._proven():
            # The tail is no proof of absence: the list's order is not documented.
            self._read(0, waiting)
        waited = timeout if self.waited is None else self.waited
        outcome.found, missing = waiting.outcome(pending)
        for key in missing:
            outcome.failed[key] = (NOT_ENROLLED, self._not_enrolled_detail(key, waited))
        return outcome

    def resume_after(self, offset: int) -> None:
        """Confirm, in another process, contacts that an adapter of this same run wrote after
        the step held ``offset`` contacts: the read-back starts at that offset, as that
        adapter's would have, instead of reading the whole step (which grows every night).
        A key not found there is still looked for in the whole step before it is declared
        ``notEnrolled``."""
        self._baseline = self._cursor = offset
        self._resumed = True

    def _written(self, key_hashes: Array) -> Array:
        """For the hashes of pending keys: which keys this adapter wrote (usually all).

        A key taken for written by a collision (odds about 1e-13 per key) would be read in the
        tail first and still be found by the full read before it is declared not enrolled.
        """
        if self._resumed:
            # Written by the adapter this one resumes (see resume_after).
            return np.ones(len(key_hashes), dtype=bool)
        if not self._pushed:
            return np.zeros(len(key_hashes), dtype=bool)
        written, _ = HashIndex.of(np.concatenate(self._pushed)).lookup(key_hashes)
        return written

    def _read(self, start: int, waiting: Waiting) -> int:
        """Read the step's contacts from offset ``start`` to its end, taking the keys found out of
        ``waiting`` (into the outcome's ``added``); returns the step's count on the last page.

        Only step contacts that are pending or active count: a contact that went through the
        step before keeps its finished step contact there, and Whippy may ignore it now.
        Contacts past the tail's cursor that matched no key are remembered for later calls.
        """
        total = start
        pages = self.hook.sequence_contact_pages(self.sequence_id, start, step_ids=[str(self.step_id)])
        with closing(pages):
            for page in pages:
                self._take_page(waiting, page.items, page.total, page.offset)
                total = page.total
        if self._cursor is None:
            # The first read: what follows is the tail (the start of this run's contacts only
            # when nothing was written yet).
            self._cursor = total
            if self._writes == 0:
                self._baseline = total
        elif total < self._cursor:
            self._cursor = total  # the step shrank: the final full read is the proof, not the tail
        return total

    def _take_page(self, waiting: Waiting, items: list[Any], total: int, offset: int) -> None:
        """Match one page read at ``offset``."""
        tail = self._cursor if self._cursor is not None else total
        # Kept for later calls only when it matched no key now: a million matched ones would
        # cost more than the run's keys, and the final full read (or the proof before a
        # re-send) sees any contact again anyway.
        for item in waiting.see_page(items, tail - offset):
            self._seen.add(item)
        # Pages read from offset 0 on, one after the other, while the count stays the same.
        if offset == 0:
            self._span = (total, len(items))
        elif self._span == (total, offset):
            self._span = (total, offset + len(items))
        else:
            self._span = None
        offset += len(items)
        if self._cursor is not None and self._cursor < offset <= total:
            self._cursor = offset  # page by page: a read that fails half-way keeps what it read

    def _proven(self) -> bool:
        """Whether the last pages read cover the whole step, from offset 0 on, with its count the
        same on every page since: then a contact not seen is not in the step (whatever order the
        list has, nothing was added or removed while it was read)."""
        return self._span is not None and self._span[1] >= self._span[0]

    def _prove(self, waiting: Waiting) -> bool:
        """Make :meth:`_proven` true with a full read if needed; False when the count moved or the
        read failed (the next poll tries again)."""
        if not self._proven():
            try:
                self._read(0, waiting)
            except SequencesApiError as exc:
                if not exc.is_retryable:
                    raise
                self.hook.log.warning("Reading the whole step failed; trying again later: %s", exc)
                return False
        return self._proven()

    def _not_enrolled_detail(self, key: str, timeout: float) -> str:
        step = f"step {self.step_id} of sequence {self.sequence_id}"
        if key in self._uncertain:
            return f"the answer to the request that sent this contact was lost, and it is not in {step}"
        return (
            f"Whippy accepted this contact but it was not in {step} after {timeout:.0f} s: Whippy silently "
            f"ignores contacts that lack what {_channel_words(self.step_channel)} needs, contacts active "
            "in another step of the sequence, and, unless the sequence re-adds contacts, contacts that "
            "already went through it"
        )


def _channel_words(channel: str | None) -> str:
    return f"a {channel} step" if channel else "the step's channel"
