"""Rows a service would merge into one contact: they share a phone, an email or an external id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from airflow_provider_sequences.sync.outcomes import SHARED_CONTACT

_LABELS = {"phone": "phone", "email": "email", "external_id": "external id"}


class _Claimed:
    """Hashes of the values claimed so far, sorted, and the source row that claimed each."""

    def __init__(self) -> None:
        self.hashes: np.ndarray[Any, np.dtype[np.uint64]] = np.empty(0, dtype=np.uint64)
        self.rows: np.ndarray[Any, np.dtype[np.int64]] = np.empty(0, dtype=np.int64)

    def lookup(self, hashes: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The row that claimed each hash, or -1."""
        if not len(self.hashes):
            return np.full(len(hashes), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        return np.where(self.hashes[at] == hashes, self.rows[at], -1)

    def add(self, hashes: np.ndarray[Any, Any], rows: np.ndarray[Any, Any]) -> None:
        # One sorted insert per chunk: O(claimed) copying, no re-sort of what is there.
        order = np.argsort(hashes, kind="stable")
        at = np.searchsorted(self.hashes, hashes[order])
        self.hashes = np.insert(self.hashes, at, hashes[order])
        self.rows = np.insert(self.rows, at, rows[order])


class SharedIdentities:
    """Which source row of this run first used each phone, email or external id.

    Whippy matches an incoming contact to an existing one by phone, email or external id, so
    two rows with different keys but one phone become one contact: the second row enrols the
    first row's person again, and a person already in the step is processed (messaged) again.
    So the first row with a value keeps it, and every later row sharing any of its values is
    refused (``sharedContact``) before anything is sent, naming the earlier row and the value.

    Values are kept as 64-bit hashes with the row that used them, 16 bytes a value in sorted
    arrays, so a run of a million rows with a phone and an email holds about 32 MB.

    :param fields: the contact fields the service matches contacts by.
    :param service: the service's name, for the details.
    """

    def __init__(self, fields: Sequence[str], *, service: str) -> None:
        self.fields = tuple(fields)
        labels = [_LABELS.get(name, name) for name in self.fields]
        listed = f"{', '.join(labels[:-1])} or {labels[-1]}" if len(labels) > 1 else "".join(labels)
        self._matches = f"{service} matches contacts by {listed}"
        self._claimed = {name: _Claimed() for name in self.fields}

    def claim(self, contacts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Split prepared ``contacts`` (in source order) into ``(kept, refused)``.

        Every value of every row passed in is claimed, refused rows' too: a row that shares an
        email with a refused row likely describes the same person, and the earlier row named
        in the detail has that value in the export either way. ``refused`` has the columns of
        a rejection: ``key``, ``reason``, ``detail``, ``row`` and ``fingerprint``.
        """
        count = len(contacts)
        other_row = np.full(count, -1, dtype=np.int64)
        other_field = np.full(count, "", dtype=object)
        other_value = np.full(count, "", dtype=object)
        rows = contacts["row"].to_numpy(dtype=np.int64)
        for name in self.fields:
            if name not in contacts.columns or not count:
                continue
            column = contacts[name].to_numpy(dtype=object)
            given = np.flatnonzero(pd.notna(column) & (column != ""))
            if not len(given):
                continue
            values = column[given]
            hashes = pd.util.hash_array(values, categorize=False)
            earlier = self._claimed[name].lookup(hashes)
            # Within the chunk, the first row with a value holds it.
            codes, uniques = pd.factorize(hashes)
            first = np.empty(len(uniques), dtype=np.int64)
            first[codes[::-1]] = np.arange(len(codes))[::-1]
            holder = first[codes]
            in_chunk = np.where(holder != np.arange(len(codes)), rows[given][holder], -1)
            shared = np.where(earlier >= 0, earlier, in_chunk)
            new = (shared >= 0) & (other_row[given] < 0)
            at = given[new]
            other_row[at] = shared[new]
            other_field[at] = _LABELS.get(name, name)
            other_value[at] = values[new]
            unclaimed = (earlier < 0) & (holder == np.arange(len(codes)))
            self._claimed[name].add(hashes[unclaimed], rows[given][unclaimed])
        refused = other_row >= 0
        if not refused.any():
            return contacts, _empty_refused()
        gone = contacts[refused]
        details = [
            f"its {label} {value} is also on source row {row}, which comes first: {self._matches}, "
            "so it would merge the two rows into one contact and may message that person twice; "
            "give each row its own value, or drop the duplicate row"
            for label, value, row in zip(
                other_field[refused], other_value[refused], other_row[refused], strict=True
            )
        ]
        refused_frame = pd.DataFrame(
            {
                "key": gone["key"].to_numpy(),
                "reason": SHARED_CONTACT,
                "detail": details,
                "row": gone["row"].to_numpy(),
                "fingerprint": gone["fingerprint"].to_numpy(),
            }
        )
        return contacts[~refused].reset_index(drop=True), refused_frame


def _empty_refused() -> pd.DataFrame:
    return pd.DataFrame({name: [] for name in ("key", "reason", "detail", "row", "fingerprint")})
