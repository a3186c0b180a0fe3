"""Pending keys for a read-back, read in slices: a run may leave ten million, and as a dict of
Python strings with their identities they cost about 190 bytes a key (1.9 GB)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from airflow_provider_sequences.sync.hashes import Array, HashIndex, hash_strings

#: A slice of pending keys, each with its identity (see ``contract.Identity``).
Slice = Sequence[tuple[str, Any]]


class PendingSet:
    """Keys accepted but not confirmed yet, each with what identifies it in a read-back.

    Read in slices, as many times as the reader needs (the sync state reads them again each
    time), so the reader keeps only what it needs of each key: 64-bit hashes, for a
    read-back.

    :param count: how many keys :meth:`slices` yields.
    :param read: a fresh iterator of the slices, each call.
    """

    def __init__(self, count: int, read: Callable[[], Iterable[Slice]]) -> None:
        self._count = count
        self._read = read

    @classmethod
    def of(cls, pending: Mapping[str, Any], slice_size: int = 100_000) -> PendingSet:
        """Keys held in memory (a run without a state, or a handful to check)."""

        def read() -> Iterator[Slice]:
            items = iter(pending.items())
            while part := list(islice(items, slice_size)):
                yield part

        return cls(len(pending), read)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def slices(self) -> Iterator[Slice]:
        """The keys with their identities, a slice at a time."""
        return iter(self._read())

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every key with its identity."""
        for part in self.slices():
            yield from part

    def keys(self) -> Iterator[str]:
        """Every key."""
        for part in self.slices():
            yield from (key for key, _ in part)


class FoundKeys:
    """The keys of a :class:`PendingSet` that a read-back found (enrolled, no contact id known),
    held as their hashes: counted at once, listed by reading the set again.

    A key of the set whose hash is among ``hashes`` counts as found: two keys of one run share
    a hash with odds of about n² / 2⁶⁵ (3e-6 for ten million).
    """

    def __init__(self, pending: PendingSet, hashes: Array) -> None:
        self._pending = pending
        self._index = HashIndex.of(hashes)

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        for part in self._pending.slices():
            keys = [key for key, _ in part]
            found, _ = self._index.lookup(hash_strings(keys))
            yield from (key for key, hit in zip(keys, found.tolist(), strict=True) if hit)
