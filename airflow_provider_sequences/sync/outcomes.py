"""Reasons and the run result: every distinct key ends in exactly one outcome."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class SyncResult:
    """The outcome of one run, built up batch by batch.

    ``added`` and ``not_processed`` never share a key; ``stats["rows"]`` counts every row
    read, so ``rows == added + not_processed + duplicates (+ unchanged)`` always holds.
    """

    added: list[str] = field(default_factory=list)
    not_processed: dict[str, dict[str, str]] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)

    def add(self, key: str) -> None:
        self.added.append(key)

    def reject(self, key: str, reason: str, detail: str) -> None:
        self.not_processed[key] = {"reason": reason, "detail": detail}

    def reasons(self) -> Counter[str]:
        """How many keys each reason accounts for."""
        return Counter(outcome["reason"] for outcome in self.not_processed.values())

    def to_xcom(self) -> dict[str, Any]:
        """The operator's return value: JSON-safe, keys are strings."""
        stats = dict(self.stats)
        stats["added"] = len(self.added)
        stats["not_processed"] = len(self.not_processed)
        for name in ("rows", "duplicates", "requests", "write_requests", "read_requests"):
            stats.setdefault(name, 0)
        # The result's own list and dict, not copies: at a million keys a copy doubles the
        # task's memory while XCom serialises it.
        return {"added": self.added, "not_processed": self.not_processed, "stats": stats}
