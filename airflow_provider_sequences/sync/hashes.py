"""Sets of strings held as sorted 64-bit hashes: 8 bytes an entry where a Python set of a
million keys costs about 100 MB.

Two different strings share a hash with odds of about n² / 2⁶⁵ (3e-8 for a million keys), far
below anything else that can go wrong in a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

Array = np.ndarray[Any, Any]


def hash_strings(values: Any) -> Array:
    """64-bit hashes of strings, the same in every process (pandas' fixed hash key)."""
    hashed: Array = pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)
    return hashed


class HashIndex:
    """Sorted hashes, each with a payload of ``payload`` dtype (what the caller needs to know of
    the entry; ``None``: no payload).

    Added chunks are kept as sorted runs, and a run is merged into the one before it once it
    is half its size: each hash is copied about log2(n / chunk) times in all, and a lookup
    searches as many runs. One sorted array, grown by a sorted insert per chunk, copied the
    whole index for every chunk (at ten million keys, gigabytes per run).
    """

    def __init__(self, payload: type[np.generic] | None = None) -> None:
        self._dtype = payload
        self._runs: list[tuple[Array, Array | None]] = []
        self._size = 0

    @classmethod
    def of(cls, hashes: Array, payload: Array | None = None, *, presorted: bool = False) -> HashIndex:
        """An index of ``hashes`` (each once), with their ``payload`` if given, sorted at once
        (unless ``presorted``: then ``hashes`` is used as it is, not copied)."""
        index = cls(None if payload is None else payload.dtype.type)
        if presorted:
            index._runs = [(hashes, payload)] if len(hashes) else []
            index._size = len(hashes)
        else:
            index.add(hashes, payload)
        return index

    def __len__(self) -> int:
        return self._size

    @property
    def hashes(self) -> Array:
        """Every hash, sorted."""
        self._merge(until=1)
        return self._runs[0][0] if self._runs else np.empty(0, dtype=np.uint64)

    def lookup(self, hashes: Array) -> tuple[Array, Array | None]:
        """For each hash: whether it is in the index, and its payload (0 when not)."""
        found = np.zeros(len(hashes), dtype=bool)
        payload = None if self._dtype is None else np.zeros(len(hashes), dtype=self._dtype)
        for run, run_payload in self._runs:
            at = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            hit = run[at] == hashes
            found |= hit
            if payload is not None and run_payload is not None:
                payload[hit] = run_payload[at[hit]]
        return found, payload

    def add(self, hashes: Array, payload: Array | None = None) -> None:
        """Add hashes not in the index yet (with their payload)."""
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        values = None
        if self._dtype is not None:
            assert payload is not None
            values = payload[order].astype(self._dtype)
        self._runs.append((hashes[order], values))
        self._size += len(hashes)
        self._merge()

    def _merge(self, until: int | None = None) -> None:
        """Merge the newest runs while the last is at least half the one before (or, with
        ``until``, until that many runs are left)."""
        runs = self._runs
        while len(runs) > 1 and (
            (until is not None and len(runs) > until) or 2 * len(runs[-1][0]) >= len(runs[-2][0])
        ):
            (older, older_payload), (newer, newer_payload) = runs.pop(-2), runs.pop(-1)
            merged = np.concatenate([older, newer])
            values = None
            if older_payload is not None and newer_payload is not None:
                values = np.concatenate([older_payload, newer_payload])
            del older, newer, older_payload, newer_payload  # the runs' copies go before the sort's
            if values is None:
                # In place: a stable sort (timsort) finds the two sorted runs and merges them in
                # linear time, with a buffer of the smaller run; the argsort below needs an
                # order array and a sorted copy as well (4 copies of the index at the peak).
                merged.sort(kind="stable")
            else:
                order = np.argsort(merged, kind="stable")
                merged, values = merged[order], values[order]
                del order
            runs.append((merged, values))
