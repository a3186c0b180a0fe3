"""Reasons and the run result: every distinct key ends in exactly one outcome."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

# The provider's own reasons (the services' slugs, such as ``contactAlreadyInSequence``,
# ``contactNotFound``, ``forbidden``, ``contactLimitExceeded`` and ``invalidInput``, pass through).
MISSING_KEY = "missingKey"
MISSING_EMAIL = "missingEmail"
INVALID_EMAIL = "invalidEmail"
MISSING_PHONE = "missingPhone"
INVALID_PHONE = "invalidPhone"
INVALID_CONTACT_ID = "invalidContactId"
FIELD_TOO_LONG = "fieldTooLong"
INVALID_FIELD = "invalidField"
MISSING_FIELD = "missingField"
NOT_ENROLLED = "notEnrolled"
ENROLLMENT_UNCONFIRMED = "enrollmentUnconfirmed"
REQUEST_FAILED = "requestFailed"
INVALID_INPUT = "invalidInput"
CONTACT_ALREADY_IN_SEQUENCE = "contactAlreadyInSequence"
#: Another row of the run has the same phone, email or external id: the service would merge them.
SHARED_CONTACT = "sharedContact"
#: The service's plan allows no more contacts in sequences (retried by later runs).
CONTACT_LIMIT_EXCEEDED = "contactLimitExceeded"
#: The service's import skipped the contact (e.g. it is deleted, or a teammate's): not enrolled,
#: and not sent again until the row's data changes.
CONTACT_SKIPPED = "contactSkipped"

#: Reasons about the row's data: sending the same data again will fail again.
DATA_REASONS = frozenset(
    {
        MISSING_KEY,
        MISSING_EMAIL,
        INVALID_EMAIL,
        MISSING_PHONE,
        INVALID_PHONE,
        INVALID_CONTACT_ID,
        FIELD_TOO_LONG,
        INVALID_FIELD,
        MISSING_FIELD,
        INVALID_INPUT,
        SHARED_CONTACT,
    }
)

#: The provider's reasons a later run retries only when the row's data changed: the data is
#: wrong, or the service's answer will not change by itself (the contact is in the sequence
#: already, or the import skipped it). Each service adds its own slugs
#: (``ServiceAdapter.retry_when_changed``): see :func:`retry_when_changed`.
PROVIDER_RETRY_WHEN_CHANGED = DATA_REASONS | {CONTACT_ALREADY_IN_SEQUENCE, CONTACT_SKIPPED}


def retry_when_changed(service_reasons: frozenset[str]) -> frozenset[str]:
    """Every reason a later run retries only when the row's data changed: the provider's and
    the service's own (its adapter's ``retry_when_changed``)."""
    return PROVIDER_RETRY_WHEN_CHANGED | service_reasons


#: One key's outcome as a result reads it: ``(key, None, None)`` when added, else
#: ``(key, reason, detail)``.
KeyResult = tuple[str, str | None, str | None]


class StoredOutcomes(Protocol):
    """A run's outcomes where they are kept (the sync state)."""

    def counts(self) -> Counter[str | None]:
        """How many keys each reason accounts for (``None``: added)."""
        ...

    def keys(self, added: bool) -> Iterator[KeyResult]:
        """The added keys' outcomes (``added``), or the others', streamed."""
        ...


class SyncResult:
    """The outcome of one run.

    ``added`` and ``not_processed`` never share a key; ``stats["rows"]`` counts every row
    read, so ``rows == added + not_processed + duplicates (+ unchanged)`` always holds.

    A run without a state builds it up key by key (:meth:`add`, :meth:`reject`). A run with
    one passes ``stored``: its outcomes are counted in the state, and only read
    into ``added`` and ``not_processed`` when someone asks for the keys, so the counts of a
    night of ten million keys cost no memory per key.
    """

    def __init__(
        self,
        *,
        stats: Counter[str] | None = None,
        stored: StoredOutcomes | None = None,
    ) -> None:
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._stored = stored
        self._added: list[str] | None = None
        self._not_processed: dict[str, dict[str, str]] | None = None
        self._added_count = 0
        self._reasons: Counter[str] = Counter()
        if stored is None:
            self._added, self._not_processed = [], {}
            return
        for reason, count in stored.counts().items():
            if reason is None:
                self._added_count += count
            else:
                self._reasons[reason] += count

    @property
    def added(self) -> list[str]:
        """Every key added (read from the state on first use)."""
        if self._added is None:
            assert self._stored is not None
            self._added = [key for key, _, _ in self._stored.keys(added=True)]
        return self._added

    @property
    def not_processed(self) -> dict[str, dict[str, str]]:
        """Every key not processed, with its ``reason`` and ``detail`` (read on first use)."""
        if self._not_processed is None:
            assert self._stored is not None
            self._not_processed = {
                key: {"reason": reason, "detail": detail or ""}
                for key, reason, detail in self._stored.keys(added=False)
                if reason is not None
            }
        return self._not_processed

    @property
    def added_count(self) -> int:
        return self._added_count if self._added is None else len(self._added)

    @property
    def not_processed_count(self) -> int:
        return sum(self._reasons.values()) if self._not_processed is None else len(self._not_processed)

    def add(self, key: str) -> None:
        self.added.append(key)

    def reject(self, key: str, reason: str, detail: str) -> None:
        self.not_processed[key] = {"reason": reason, "detail": detail}

    def reasons(self) -> Counter[str]:
        """How many keys each reason accounts for."""
        if self._not_processed is None:
            return Counter(self._reasons)
        return Counter(outcome["reason"] for outcome in self._not_processed.values())

    def to_xcom(self, max_keys: int | None = None) -> dict[str, Any]:
        """The operator's return value: JSON-safe, keys are strings.

        ``max_keys``: ``added`` or ``not_processed`` with more keys than this is left out (its
        count stays in ``stats``, and ``omitted`` names it); ``None`` keeps both whole.
        """
        stats = dict(self.stats)
        stats["added"] = self.added_count
        stats["not_processed"] = self.not_processed_count
        for name in ("rows", "duplicates", "requests", "write_requests", "read_requests"):
            stats.setdefault(name, 0)
        value: dict[str, Any] = {}
        omitted = [
            name for name in ("added", "not_processed") if max_keys is not None and stats[name] > max_keys
        ]
        # The result's own list and dict, not copies: at a million keys a copy doubles the
        # task's memory while XCom serialises it.
        # Counted from the keys handed over: a key another run recorded since the counts were
        # taken is in neither.
        if "added" not in omitted:
            value["added"] = self.added
            stats["added"] = len(self.added)
        if "not_processed" not in omitted:
            value["not_processed"] = self.not_processed
            stats["not_processed"] = len(self.not_processed)
        value["stats"] = stats
        if omitted:
            value["omitted"] = omitted
        return value
