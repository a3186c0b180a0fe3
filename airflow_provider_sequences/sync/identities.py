"""Rows a service would merge into one contact: they share a phone, an email or an external id."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from airflow_provider_sequences.sync.contract import ServiceAdapter
from airflow_provider_sequences.sync.hashes import HashIndex, hash_strings
from airflow_provider_sequences.sync.outcomes import SHARED_CONTACT
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.values import Claims

_LABELS = {"phone": "phone", "email": "email", "external_id": "external id"}
_Array = np.ndarray[Any, Any]


class ClaimStore(Protocol):
    """Where claims outlive the run (the sync state)."""

    def iter_claims(self) -> Iterator[Claims]: ...


#: Column of a batch: which of its values the run claimed first (bit i: ``fields[i]``).
NEW_CLAIMS = "_new_claims"


class SharedIdentities:
    """Which key first used each phone, email or external id, in this run or an earlier one.

    Whippy matches an incoming contact to an existing one by phone, email or external id, so
    two rows with different keys but one phone become one contact: the second row enrols the
    first row's person again, and a person already in the step is processed (messaged) again.
    So the first row with a value keeps it, and every later row sharing any of its values is
    refused (``sharedContact``) before anything is sent, naming the value and the earlier row
    (or, for a value an earlier run sent, the key it was sent with).

    Values are kept as 64-bit hashes: this run's with the row that used them (12 bytes a value,
    so a run of a million rows with a phone and an email holds about 24 MB), earlier runs' with
    a hash of the key that sent them. With a ``store``, the claims of earlier runs are loaded
    at the first chunk that has something to send (an unchanged night reads none); the caller
    stores each batch's :meth:`claims_of` with its outcome (a batch whose answer a crash
    interrupted is still in flight, so the retry prepares its rows, and claims their values,
    again).

    :param fields: the contact fields the service matches contacts by.
    :param service: the service's name, for the details.
    :param matched_by: every field the service matches by, for the details (default ``fields``;
        a field that cannot be shared, such as an external id that is the key, needs no check).
    :param store: where claims of earlier runs are read from (the sync state), or ``None``.
    """

    def __init__(
        self,
        fields: Sequence[str],
        *,
        service: str,
        matched_by: Sequence[str] = (),
        store: ClaimStore | None = None,
    ) -> None:
        self.fields = tuple(fields)
        self.service = service
        self.store = store
        # This run's claims (payload: the source row) and earlier runs' (the key's hash): keys
        # are unique in a run, so only an earlier run's value can be the same key's own.
        self._claimed = {name: HashIndex(np.int32) for name in self.fields}
        self._earlier = {name: HashIndex(np.uint64) for name in self.fields}
        self._loaded = store is None
        labels = [_LABELS.get(name, name) for name in matched_by or self.fields]
        listed = f"{', '.join(labels[:-1])} or {labels[-1]}" if len(labels) > 1 else "".join(labels)
        self._merge = (
            f"{service} matches contacts by {listed}, so it would merge the two into one contact and "
            "may message that person twice; give each row its own value, or drop the duplicate row"
        )

    @classmethod
    def for_run(
        cls, adapter: ServiceAdapter, spec: PrepareSpec, store: ClaimStore | None
    ) -> SharedIdentities | None:
        """The claims a run of ``adapter`` makes, or ``None`` when the service merges no contacts."""
        # Keys are unique in a run: an external id that is the key needs no claim.
        fields = [
            name
            for name in adapter.match_fields
            if not (name == "external_id" and spec.column_map.get(spec.key_column) == name)
        ]
        if not fields:
            return None
        return cls(fields, service=adapter.rules.service, matched_by=adapter.match_fields, store=store)

    def _load(self) -> None:
        assert self.store is not None
        parts: dict[str, list[tuple[_Array, _Array]]] = {name: [] for name in self.fields}
        for claims in self.store.iter_claims():
            table = _unpack(claims)
            holders = hash_strings(np.asarray(claims.keys, dtype=object))
            for column, name in enumerate(claims.fields):
                if name in parts:
                    given = table[:, column] != 0
                    parts[name].append((table[given, column], holders[given]))
        for name in self.fields:
            # One field at a time, its parts freed once joined: ten million values take 160 MB
            # a field, and np.unique's copies of every field at once were 3.5 times what is kept.
            found = parts.pop(name)
            if found:
                self._earlier[name] = _oldest_claims(found)
            del found
        self._loaded = True

    def forget(self) -> None:
        """Drop the claims held, once the run has read and sent all its rows: 12 bytes a value
        this run claimed and 16 a value earlier runs sent (some 400 MB for ten million rows
        with a phone and an email), while the read-back needs the memory. A later claim reads
        the stored ones again."""
        self._claimed = {name: HashIndex(np.int32) for name in self.fields}
        self._earlier = {name: HashIndex(np.uint64) for name in self.fields}
        self._loaded = self.store is None

    def claim(self, contacts: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Split prepared ``contacts`` (in source order) into ``(kept, refused)``.

        Every value of every row passed in is claimed for the rest of the run, refused rows'
        too: a row sharing an email with a refused row likely describes the same person, and
        the earlier row named in the detail has that value either way. ``refused`` has the
        columns of a rejection: ``key``, ``reason``, ``detail``, ``row`` and ``fingerprint``.
        """
        count = len(contacts)
        if not count:
            return contacts, _empty_refused()
        if not self._loaded:
            self._load()
        rows = contacts["row"].to_numpy(dtype=np.int64)
        key_hashes = hash_strings(contacts["key"].to_numpy())
        other_row = np.full(count, -2, dtype=np.int64)  # -2: not shared; -1: an earlier run's
        other_field = np.full(count, "", dtype=object)
        other_value = np.full(count, "", dtype=object)
        other_hash = np.zeros(count, dtype=np.uint64)
        new_claims = np.zeros(count, dtype=np.uint8)
        for bit, name in enumerate(self.fields):
            if name not in contacts.columns:
                continue
            column = contacts[name].to_numpy(dtype=object)
            given = np.flatnonzero(pd.notna(column) & (column != ""))
            if not len(given):
                continue
            values, hashes, mine = column[given], hash_strings(column[given]), key_hashes[given]
            in_run, claimed_row = self._claimed[name].lookup(hashes)
            before, holder = self._earlier[name].lookup(hashes)
            assert claimed_row is not None
            assert holder is not None
            claimed = in_run | before
            # A claimed value belongs to the key that claimed it (a key's own value from an
            # earlier run or attempt stays its own); an unclaimed one to its first row here.
            codes, uniques = pd.factorize(hashes)
            first = np.empty(len(uniques), dtype=np.int64)
            first[codes[::-1]] = np.arange(len(codes))[::-1]
            holds = first[codes] == np.arange(len(codes))
            shared = np.where(claimed, in_run | (holder != mine), ~holds)
            fresh = shared & (other_row[given] == -2)
            at = given[fresh]
            source = np.where(in_run, claimed_row, -1)
            other_row[at] = np.where(claimed, source, rows[given][first[codes]])[fresh]
            other_field[at] = name
            other_value[at] = values[fresh]
            other_hash[at] = hashes[fresh]
            unclaimed = holds & ~claimed
            self._claimed[name].add(hashes[unclaimed], rows[given][unclaimed])
            new_claims[given[unclaimed]] |= np.uint8(1 << bit)
        refused = other_row > -2
        contacts = contacts.assign(**{NEW_CLAIMS: new_claims})
        if not refused.any():
            return contacts, _empty_refused()
        gone = contacts[refused]
        refused_frame = pd.DataFrame(
            {
                "key": gone["key"].to_numpy(),
                "reason": SHARED_CONTACT,
                "detail": self._details(
                    other_field[refused], other_value[refused], other_row[refused], other_hash[refused]
                ),
                "row": gone["row"].to_numpy(),
                "fingerprint": gone["fingerprint"].to_numpy(),
            }
        )
        return contacts[~refused].reset_index(drop=True), refused_frame

    def claims_of(self, batch: pd.DataFrame) -> Claims | None:
        """The values of a batch (rows :meth:`claim` kept) that this run claimed first, to
        store once the batch was sent; ``None`` when there are none (values sent before)."""
        new = batch[NEW_CLAIMS].to_numpy(dtype=np.uint8) if NEW_CLAIMS in batch.columns else None
        if new is None or not new.any():
            return None
        rows = np.flatnonzero(new)
        table = np.zeros((len(rows), len(self.fields)), dtype="<u8")
        for bit, name in enumerate(self.fields):
            mine = rows[(new[rows] & (1 << bit)) != 0]
            if len(mine):
                table[np.searchsorted(rows, mine), bit] = hash_strings(
                    batch[name].to_numpy(dtype=object)[mine]
                )
        return Claims(self.fields, batch["key"].to_numpy(dtype=object)[rows].tolist(), table.tobytes())

    def _details(self, fields: _Array, values: _Array, rows: _Array, hashes: _Array) -> list[str]:
        holders: dict[tuple[str, int], str] = {}
        earlier = rows == -1
        if self.store is not None and earlier.any():
            # Rare (a new row sharing a value with a key sent before): read the claims again
            # rather than keep every key in memory.
            wanted = {name: hashes[earlier & (fields == name)] for name in set(fields[earlier].tolist())}
            for claims in self.store.iter_claims():
                table = _unpack(claims)
                for column, name in enumerate(claims.fields):
                    if name in wanted:
                        for at in np.flatnonzero(np.isin(table[:, column], wanted[name])):
                            holders.setdefault((name, int(table[at, column])), claims.keys[at])
        details = []
        for name, value, row, value_hash in zip(fields, values, rows, hashes.tolist(), strict=True):
            label = _LABELS.get(name, name)
            if row >= 0:
                where = f"is also on source row {row}, which comes first"
            else:
                holder = holders.get((name, value_hash))
                named = f"key {holder!r}" if holder is not None else "another key"
                where = f"was sent to {self.service} earlier, with {named}"
            details.append(f"its {label} {value} {where}: {self._merge}")
        return details


def _oldest_claims(parts: list[tuple[_Array, _Array]]) -> HashIndex:
    """An index of the value hashes in ``parts`` (oldest first), each with the hash of the key
    that claimed it first: two runs at once may both have sent one value."""
    hashes = np.concatenate([value for value, _ in parts])
    holders = np.concatenate([holder for _, holder in parts])
    parts.clear()
    order = np.argsort(hashes, kind="stable")
    hashes = hashes[order]
    holders = holders[order]
    del order
    if len(hashes) > 1:
        later = np.flatnonzero(hashes[1:] == hashes[:-1]) + 1
        if len(later):
            hashes, holders = np.delete(hashes, later), np.delete(holders, later)
    return HashIndex.of(hashes, holders.astype(np.uint64, copy=False), presorted=True)


def _unpack(claims: Claims) -> _Array:
    """A batch's hashes as a (keys x fields) uint64 table."""
    return np.frombuffer(claims.hashes, dtype="<u8").reshape(len(claims.keys), len(claims.fields))


def _empty_refused() -> pd.DataFrame:
    return pd.DataFrame({name: [] for name in ("key", "reason", "detail", "row", "fingerprint")})
