"""The read-back's index: the pending keys still waiting, found by what a step contact shows."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_sequences.adapters.whippy.identities import whippy_identity
from airflow_provider_sequences.adapters.whippy.steps import CURRENT_STATUSES


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


#: An index's entry: the one key with that value (the norm), or the keys sharing it.
_Entry = str | list[str]
#: What a pending key's identity becomes once the key is found.
_FOUND: Any = object()


class Waiting:
    """Pending keys not seen yet, indexed by what identifies them in a read-back.

    A step contact takes the key whose external id it shows, when it shows one that a key
    has; otherwise the keys with its phone or its (lowercase) email, the values Whippy itself
    matches contacts by. So a read-back never depends on ``external_id``, which Whippy's step
    contacts may not carry. Each step contact read costs O(1).

    Sized for a million keys: a key found is marked in ``pending`` itself (its identity
    replaced by :data:`_FOUND`) rather than copied to another dict; a key that is its own
    external id (the usual set-up) is looked up in ``pending`` rather than in a second index;
    the phone and email indexes are built only when a step contact's external id identifies
    no key (always, when Whippy shows none).

    :param foreign: keys this adapter did not write, for :attr:`found_written`.
    """

    def __init__(self, pending: dict[str, Any], foreign: Collection[str]) -> None:
        self._pending = pending
        self._foreign = foreign
        self._left = len(pending)
        #: Keys found that this adapter wrote.
        self.found_written = 0
        self._own_ids = False  # whether some key is matched by ``pending`` as its external id
        self._by_external_id: dict[str, _Entry] = {}
        self._by_phone: dict[str, _Entry] | None = None
        self._by_email: dict[str, _Entry] = {}
        for key, stored in pending.items():
            identity = whippy_identity(stored)
            external_id = identity[2] if identity is not None else None
            if external_id is None:
                continue
            if external_id == key:
                self._own_ids = True
            else:
                self._index(self._by_external_id, external_id, key)

    @staticmethod
    def _index(index: dict[str, _Entry], value: str, key: str) -> None:
        held = index.get(value)
        if held is None:
            index[value] = key
        elif isinstance(held, list):
            held.append(key)
        else:
            index[value] = [held, key]

    def _contact_indexes(self) -> tuple[dict[str, _Entry], dict[str, _Entry]]:
        """The phone and email indexes of the keys still waiting, built at the first need."""
        if self._by_phone is None:
            self._by_phone = {}
            for key, stored in self._pending.items():
                identity = None if stored is _FOUND else whippy_identity(stored)
                if identity is None:
                    continue
                phone, email, _ = identity
                if phone:
                    self._index(self._by_phone, phone, key)
                if email:
                    self._index(self._by_email, email, key)
        return self._by_phone, self._by_email

    def __bool__(self) -> bool:
        return self._left > 0

    def __len__(self) -> int:
        return self._left

    def remaining(self) -> Iterator[str]:
        """The keys still waiting."""
        return (key for key, identity in self._pending.items() if identity is not _FOUND)

    def waits_for(self, key: str) -> bool:
        return key in self._pending and self._pending[key] is not _FOUND

    def _take(self, key: str) -> int:
        if self._pending[key] is _FOUND:
            return 0
        self._pending[key] = _FOUND  # a value replaced: the dict does not grow
        self._left -= 1
        if key not in self._foreign:
            self.found_written += 1
        return 1

    def outcome(self) -> tuple[dict[str, str | None], list[str]]:
        """(keys found, with no contact id, keys still waiting): ``pending`` becomes the first."""
        left = list(self.remaining())
        for key in left:
            del self._pending[key]
        for key in self._pending:
            self._pending[key] = None
        return self._pending, left

    def _own(self, external_id: str) -> int:
        """Take the key that is this external id itself, if it waits with it as its external id."""
        held = self._pending.get(external_id)
        if held is None or held is _FOUND:
            return 0
        identity = whippy_identity(held)
        return self._take(external_id) if identity is not None and identity[2] == external_id else 0

    def _see(self, external_id: str | None, phone: str | None, email: str | None) -> int:
        taken = 0
        if external_id is not None:
            if self._own_ids:
                taken += self._own(external_id)
            if self._by_external_id:
                taken += self._take_all(self._by_external_id, external_id)
            if taken:
                return taken
        if phone is None and email is None:
            return 0
        by_phone, by_email = self._contact_indexes()
        if phone is not None:
            taken += self._take_all(by_phone, phone)
        if email is not None:
            taken += self._take_all(by_email, email)
        return taken

    def _take_all(self, index: dict[str, _Entry], value: str) -> int:
        if not index:
            return 0
        held = index.pop(value, None)
        if held is None:
            return 0
        return sum(self._take(key) for key in ([held] if isinstance(held, str) else held))

    def see(self, seen: StepContacts) -> None:
        """Take the keys that step contacts read earlier identify."""
        for external_id in seen.external_ids:
            self._see(external_id, None, None)
        for phone in seen.phones:
            self._see(None, phone, None)
        for email in seen.emails:
            self._see(None, None, email)

    def see_page(self, items: list[Any], tail: int) -> list[Mapping[str, Any]]:
        """Take the keys a page's current step contacts identify; returns those of its items at
        or past index ``tail`` that are current and took no key.

        :meth:`see_item` of each, with the usual case of the documented answer (a key that is
        its own external id, shown by the step contact) in one dict lookup: a read-back sees a
        million of them."""
        unmatched: list[Mapping[str, Any]] = []
        own_ids = self._own_ids
        for at, item in enumerate(items):
            status = item.get("status")
            current = type(status) is str and status in CURRENT_STATUSES
            if not current and str(status or "").lower() not in CURRENT_STATUSES:
                continue
            if own_ids:
                contact = item.get("contact") or {}
                external_id = contact.get("external_id")
                # An empty one identifies nothing, as in :meth:`see_item`.
                if type(external_id) is str and external_id and self._own(external_id):
                    continue
            if not self.see_item(item) and at >= tail:
                unmatched.append(item)
        return unmatched

    def see_item(self, item: Mapping[str, Any]) -> int:
        """Take the keys a step contact identifies; how many were still waiting."""
        contact = item.get("contact") or {}
        external_id, phone, email = contact.get("external_id"), contact.get("phone"), contact.get("email")
        return self._see(
            str(external_id) if external_id else None,
            str(phone) if phone else None,
            str(email).lower() if email else None,
        )
