"""The plan's shortcut for keys enrolled by earlier runs: matched by hash, not looked up.

Nearly every key of an unchanged night is enrolled already, and the plan's answer for them is
always the same: unchanged. Looking each up in the state costs a query per slice of keys (most
of an unchanged night); one pass over the state's enrolled keys, held as sorted 64-bit hashes
(8 bytes a key), costs about a fifth as much per key. The run makes that pass once it has read
2% as many rows as the state holds keys (as many as the last finished run read, when one did):
a nightly export is most of the CRM, and an export smaller than that keeps the lookups. A key
whose hash is not there (new, changed, refused, pending, in flight, or recorded by a run that is
live now) goes through the full plan.

A new key that shares its hash with an enrolled one would be taken as unchanged: the odds are
those of :mod:`~airflow_provider_sequences.sync.hashes` (about 3e-6 for ten million keys).
"""

from __future__ import annotations

import numpy as np

from airflow_provider_sequences.sync.hashes import Array, hash_strings
from airflow_provider_sequences.sync.state.null import Store

#: The share of the state's key count a run reads before it reads the enrolled keys. The pass
#: costs what looking up a fifth of them would: an export of 2% pays it 10 times over, at
#: worst (some 8 s against a state of ten million), and a whole export saves its lookups.
READ_AFTER_SHARE = 0.02


class EnrolledKeys:
    """Which keys of a chunk an earlier run enrolled, once the run has read enough rows.

    :param store: the state read.
    :param run_id: this run: what it recorded itself is planned in full (it is in its result).
    :param enabled: ``False`` for a run that sends every key again (a full resync).
    """

    def __init__(self, store: Store, run_id: str, *, enabled: bool) -> None:
        self.store = store
        self.run_id = run_id
        self._index: Array | None = None  # the enrolled keys' hashes, sorted
        self._read_after: int | None = None
        self.enabled = enabled

    def __len__(self) -> int:
        """How many enrolled keys the pass read (0 before it is read)."""
        return 0 if self._index is None else len(self._index)

    def forget(self) -> None:
        """Drop the pass read: later positions are all ``-1``."""
        self._index = None
        self.enabled = False

    def positions(self, hashes: Array, rows_read: int | None = None) -> Array:
        """For each key hash: its place among the enrolled keys (sorted by hash), or ``-1`` when
        an earlier run did not enroll it. ``rows_read``: the rows the run has read, this
        chunk's included; until they are enough to make the pass worth it, every key answers
        ``-1`` (and is looked up). ``None``: do not read the pass."""
        missing = np.full(len(hashes), -1, dtype=np.int64)
        if not self.enabled:
            return missing
        if self._index is None:
            if rows_read is None:
                return missing
            if self._read_after is None:
                # The last run's rows stand for the key count: counting reads the whole index.
                keys = self.store.last_run_rows() or self.store.key_count()
                self._read_after = int(keys * READ_AFTER_SHARE)
            if rows_read < self._read_after:
                return missing
            self._index = self._read()
        if not len(self._index):
            return missing
        at = np.minimum(np.searchsorted(self._index, hashes), len(self._index) - 1)
        return np.where(self._index[at] == hashes, at, missing)

    def _read(self) -> Array:
        # Runs live now (sibling shards, and this one) may change their keys while this run
        # reads: their keys take the full plan, which leaves a sibling's keys to it.
        excluding = self.store.live_runs() | {self.run_id}
        parts = [hash_strings(keys) for keys in self.store.enrolled_keys(excluding)]
        hashes = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        parts.clear()
        hashes.sort()
        return hashes
