"""The keys a run has read so far, to tell each key's first row from its repeats.

A key an earlier run enrolled (nearly every key of a nightly export) takes one bit, at its
place in the enrolled pass's index (see :mod:`~airflow_provider_sequences.sync.enrolled`),
which the run reads anyway; any other key takes its 64-bit hash in a :class:`HashIndex`. An
unchanged night of ten million keys so holds 10 MB where a hash per key held 80 MB, and each
chunk searches a small index where a hash per key meant searching ten million (4 s a night).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from airflow_provider_sequences.sync.enrolled import EnrolledKeys
from airflow_provider_sequences.sync.hashes import Array, HashIndex


class KeysRead:
    """Which rows of each chunk hold the first occurrence of their key in the run; the first
    occurrence wins, whether accepted or not.

    :param enrolled: the keys earlier runs enrolled (read once the run has read enough rows).
    """

    def __init__(self, enrolled: EnrolledKeys) -> None:
        self.enrolled = enrolled
        self._others = HashIndex()
        self._enrolled_read = np.zeros(0, dtype=bool)  # one flag per enrolled key

    def take(self, hashes: Array, rows_read: int) -> tuple[Array, Array]:
        """For each row of a chunk (``hashes``: its key's hash; ``rows_read``: the run's rows
        read, this chunk's included): whether it is its key's first, and whether it is the
        first of a key an earlier run enrolled. The chunk's keys count as read from now on."""
        at = self.enrolled.positions(hashes, rows_read)
        enrolled = at >= 0
        if len(self._enrolled_read) != len(self.enrolled):
            self._enrolled_read = np.zeros(len(self.enrolled), dtype=bool)
        earlier = self._seen(hashes, at)
        first: Array = ~pd.Series(hashes).duplicated().to_numpy() & ~earlier
        self._enrolled_read[at[first & enrolled]] = True
        self._others.add(hashes[first & ~enrolled])
        return first, first & enrolled

    def forget(self) -> None:
        """Drop what is held (the enrolled pass too), once the run has read every row."""
        self._others = HashIndex()
        self._enrolled_read = np.zeros(0, dtype=bool)
        self.enrolled.forget()

    def seen(self, hashes: Array) -> Array:
        """For each key hash: whether the run has read the key."""
        return self._seen(hashes, self.enrolled.positions(hashes))

    def _seen(self, hashes: Array, at: Array) -> Array:
        # A key read before the pass was read (or not enrolled) is among the others.
        found, _ = self._others.lookup(hashes)
        enrolled = at >= 0
        if len(self._enrolled_read) and enrolled.any():
            found[enrolled] |= self._enrolled_read[at[enrolled]]
        return found
