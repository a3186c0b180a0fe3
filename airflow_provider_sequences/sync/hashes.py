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
    the entry; ``None``: no payload)."""

    def __init__(self, payload: type[np.generic] | None = None) -> None:
        self.hashes: Array = np.empty(0, dtype=np.uint64)
        self.payload: Array | None = None if payload is None else np.empty(0, dtype=payload)

    @classmethod
    def of(cls, hashes: Array) -> HashIndex:
        """An index of ``hashes``, without payload, sorted at once."""
        index = cls()
        index.hashes = np.sort(hashes)
        return index

    def __len__(self) -> int:
        return len(self.hashes)

    def lookup(self, hashes: Array) -> tuple[Array, Array | None]:
        """For each hash: whether it is in the index, and its payload (0 when not)."""
        if not len(self.hashes):
            found = np.zeros(len(hashes), dtype=bool)
            payload = None if self.payload is None else np.zeros(len(hashes), dtype=self.payload.dtype)
            return found, payload
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        found = self.hashes[at] == hashes
        return found, None if self.payload is None else np.where(found, self.payload[at], 0)

    def add(self, hashes: Array, payload: Array | None = None) -> None:
        """Add hashes not in the index yet (with their payload)."""
        # One sorted insert per call: O(size) copying, no re-sort of what is there.
        order = np.argsort(hashes, kind="stable")
        at = np.searchsorted(self.hashes, hashes[order])
        self.hashes = np.insert(self.hashes, at, hashes[order])
        if self.payload is not None:
            assert payload is not None
            self.payload = np.insert(self.payload, at, payload[order].astype(self.payload.dtype))
