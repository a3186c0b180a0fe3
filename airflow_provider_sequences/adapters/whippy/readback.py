"""The read-back's index: the pending keys still waiting, found by what a step contact shows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from airflow_provider_sequences.adapters.whippy.identities import whippy_identity
from airflow_provider_sequences.adapters.whippy.steps import CURRENT_STATUSES
from airflow_provider_sequences.sync.hashes import Array, HashIndex, hash_strings
from airflow_provider_sequences.sync.pending import FoundKeys, PendingSet


@dataclass
class StepContacts:
    """External ids, phones and (lowercase) emails of step contacts read in the target step."""

    external_ids: set[str] = field(default_factory=set)
    phones: set[str] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)

    def add(self, item: Mapping[str, Any]) -> None:
        contact = item.get("contact") or {}
        if contact.get("external_id"):
            self.external_ids.add(str(contact["external_id"]))
        if contact.get("phone"):
            self.phones.add(str(contact["phone"]))
        if contact.get("email"):
            self.emails.add(str(contact["email"]).lower())


class _Values:
    """Which pending keys hold each value: the values' hashes, sorted, and each one's key (its
    position in the pending set). About 12 bytes a key.

    :param given: which keys have a value (default: all of them).
    """

    def __init__(self, hashes: Array, given: Array | None = None) -> None:
        kind = np.int32 if len(hashes) < 2**31 else np.int64
        if given is None:
            order = np.argsort(hashes, kind="stable")
            self.hashes = hashes[order]
            self.positions = order.astype(kind)
        else:
            positions = np.flatnonzero(given).astype(kind)
            values = hashes[positions]
            order = np.argsort(values, kind="stable")
            self.hashes = values[order]
            self.positions = positions[order]

    def ranges(self, hashes: Array) -> tuple[list[int], list[int]]:
        """For each hash: where its keys start and end in :attr:`positions`."""
        return (
            np.searchsorted(self.hashes, hashes, side="left").tolist(),
            np.searchsorted(self.hashes, hashes, side="right").tolist(),
        )

    def locate(self, hashes: Array) -> tuple[Array, Array]:
        """For each hash: the position of the (first) key with it, and whether there is one."""
        at = np.minimum(np.searchsorted(self.hashes, hashes), max(len(self.hashes) - 1, 0))
        if not len(self.hashes):
            return at, np.zeros(len(hashes), dtype=bool)
        return self.positions[at], self.hashes[at] == hashes


def _hashes(values: list[str]) -> Array:
    return hash_strings(values) if values else np.empty(0, dtype=np.uint64)


def _value_hashes(values: list[str | None]) -> Array:
    """Hashes of values, 0 for none: an empty value identifies nothing and is never looked up."""
    hashed = _hashes([value or "" for value in values])
    hashed[[at for at, value in enumerate(values) if not value]] = 0
    return hashed


def _identity(stored: Any) -> tuple[str | None, str | None, str | None]:
    return whippy_identity(stored) or (None, None, None)


def _joined(parts: list[Array]) -> Array:
    joined = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
    parts.clear()
    return joined


def _is_current(item: Mapping[str, Any]) -> bool:
    status = item.get("status")
    if type(status) is str and status in CURRENT_STATUSES:
        return True
    return str(status or "").lower() in CURRENT_STATUSES


class Waiting:
    """Pending keys not seen yet, indexed by what identifies them in a read-back.

    A step contact takes the keys whose external id it shows, when it shows one that a key
    has; otherwise the keys with its phone or its (lowercase) email, the values Whippy itself
    matches contacts by. So a read-back never depends on ``external_id``, which Whippy's step
    contacts may not carry.

    Sized for ten million keys: the keys and their values are held as 64-bit hashes with
    their positions (12 bytes a key and value, where Python strings with their identities
    cost some 190 bytes a key), and each key found is a byte. The phone and email indexes are
    built only when a step contact's external id identifies no key (always, when Whippy shows
    none). Two values with one hash (odds of about n² / 2⁶⁵) count as one.

    :param pending: the keys and their identities (read here, and again for the phone and email
        indexes and for the keys still waiting at the end).
    :param written: for an array of key hashes, which keys this adapter wrote
        (:attr:`found_written` counts those found).
    """

    def __init__(self, pending: PendingSet, written: Callable[[Array], Array]) -> None:
        self._pending = pending
        keys: list[Array] = []
        external_ids: list[Array] = []
        for part in pending.slices():
            keys.append(_hashes([key for key, _ in part]))
            external_ids.append(_value_hashes([_identity(stored)[2] for _, stored in part]))
        key_hashes, id_hashes = _joined(keys), _joined(external_ids)
        self._left = len(key_hashes)
        self._found = bytearray(self._left)
        self._foreign = bytearray((~written(key_hashes)).astype(np.uint8).tobytes())
        #: Keys found that this adapter wrote.
        self.found_written = 0
        self._keys = _Values(key_hashes)
        if np.array_equal(id_hashes, key_hashes):
            # Every key is its own external id (the usual set-up): one index serves both.
            self._by_external_id = self._keys
        else:
            self._by_external_id = _Values(id_hashes, id_hashes != 0)
        del key_hashes, id_hashes
        self._by_phone: _Values | None = None
        self._by_email: _Values | None = None

    def _contact_indexes(self) -> tuple[_Values, _Values]:
        """The phone and email indexes, built at the first need: the pending keys are read
        again (a read-back whose step contacts show external ids never needs them)."""
        if self._by_phone is None or self._by_email is None:
            phones = np.zeros(len(self._found), dtype=np.uint64)
            emails = np.zeros(len(self._found), dtype=np.uint64)
            for part in self._pending.slices():
                # Matched by the keys' hashes: a second read may list them in another order.
                at, known = self._keys.locate(_hashes([key for key, _ in part]))
                identities = [_identity(stored) for _, stored in part]
                phones[at[known]] = _value_hashes([identity[0] for identity in identities])[known]
                emails[at[known]] = _value_hashes([identity[1] for identity in identities])[known]
            self._by_phone = _Values(phones, phones != 0)
            del phones
            self._by_email = _Values(emails, emails != 0)
        return self._by_phone, self._by_email

    def __bool__(self) -> bool:
        return self._left > 0

    def __len__(self) -> int:
        return self._left

    def _waiting(self) -> Array:
        waiting: Array = np.frombuffer(self._found, dtype=np.uint8) == 0
        return waiting

    def waits_for_each(self, keys: list[str]) -> list[bool]:
        """For each key: whether it is pending and not seen yet."""
        if not keys:
            return []
        starts, ends = self._keys.ranges(_hashes(keys))
        found = self._found
        return [
            any(not found[at] for at in self._keys.positions[start:end].tolist())
            for start, end in zip(starts, ends, strict=True)
        ]

    def waits_for_foreign(self) -> bool:
        """Whether a key this adapter did not write is still waiting."""
        foreign = np.frombuffer(self._foreign, dtype=np.uint8) == 1
        return bool((foreign & self._waiting()).any())

    def outcome(self, pending: PendingSet) -> tuple[FoundKeys, list[str]]:
        """(the keys found, the keys still waiting), ``pending`` read again for the second."""
        waiting = self._waiting()[self._keys.positions]  # in the order of the sorted hashes
        found = FoundKeys(pending, self._keys.hashes[~waiting])
        if not waiting.any():
            return found, []
        left = HashIndex.of(self._keys.hashes[waiting], presorted=True)
        missing: list[str] = []
        for part in pending.slices():
            keys = [key for key, _ in part]
            hit, _ = left.lookup(_hashes(keys))
            missing += [key for key, miss in zip(keys, hit.tolist(), strict=True) if miss]
        return found, missing

    def _take(self, index: _Values, start: int, end: int) -> int:
        if start == end:
            return 0
        found, taken = self._found, 0
        for at in index.positions[start:end].tolist():
            if not found[at]:
                found[at] = 1
                taken += 1
                if not self._foreign[at]:
                    self.found_written += 1
        self._left -= taken
        return taken

    def _see_all(self, external_ids: list[str], phones: list[str], emails: list[str]) -> list[int]:
        """Take the keys each step contact identifies, one after the other (``""``: no value);
        how many each took."""
        count = len(external_ids)
        id_starts, id_ends = self._by_external_id.ranges(_hashes(external_ids))
        contact_ranges: tuple[list[int], list[int], list[int], list[int]] | None = None
        taken = [0] * count
        for at in range(count):
            if external_ids[at]:
                taken[at] = self._take(self._by_external_id, id_starts[at], id_ends[at])
                if taken[at]:
                    continue
            if not phones[at] and not emails[at]:
                continue
            by_phone, by_email = self._contact_indexes()
            if contact_ranges is None:
                contact_ranges = (*by_phone.ranges(_hashes(phones)), *by_email.ranges(_hashes(emails)))
            phone_starts, phone_ends, email_starts, email_ends = contact_ranges
            if phones[at]:
                taken[at] += self._take(by_phone, phone_starts[at], phone_ends[at])
            if emails[at]:
                taken[at] += self._take(by_email, email_starts[at], email_ends[at])
        return taken

    def see(self, seen: StepContacts) -> None:
        """Take the keys that step contacts read earlier identify."""
        external_ids, phones, emails = list(seen.external_ids), list(seen.phones), list(seen.emails)
        self._see_all(external_ids, [""] * len(external_ids), [""] * len(external_ids))
        self._see_all([""] * len(phones), phones, [""] * len(phones))
        self._see_all([""] * len(emails), [""] * len(emails), emails)

    def see_page(self, items: list[Any], tail: int) -> list[Mapping[str, Any]]:
        """Take the keys a page's current step contacts identify, in the page's order; returns
        those of its items at or past index ``tail`` that are current and took no key."""
        current = [(at, item) for at, item in enumerate(items) if _is_current(item)]
        external_ids, phones, emails = [], [], []
        for _, item in current:
            contact = item.get("contact") or {}
            external_id, phone, email = contact.get("external_id"), contact.get("phone"), contact.get("email")
            external_ids.append(str(external_id) if external_id else "")
            phones.append(str(phone) if phone else "")
            emails.append(str(email).lower() if email else "")
        taken = self._see_all(external_ids, phones, emails)
        return [item for (at, item), took in zip(current, taken, strict=True) if not took and at >= tail]
