"""The values the sync state holds and the stages hand it: statuses, outcomes, claims, scopes.

Plain data, no database: the stages (:mod:`~airflow_provider_sequences.sync.identities`, the
planner, the recorder) use them without importing the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Statuses of a key in the state table.
ADDED = "added"
NOT_PROCESSED = "not_processed"
#: Sent and accepted, not yet confirmed (Whippy works in the background).
PENDING = "pending"
#: A key of a batch that was being sent: if the worker died then, a retry knows the batch
#: may already have been applied. Stored per batch in the in-flight table, and shown as this
#: status by :func:`~airflow_provider_sequences.sync.state.read_state`.
SENDING = "sending"


@dataclass(frozen=True)
class Claims:
    """One batch's claimed values: for each key, a 64-bit hash of each field's value (0: none),
    as little-endian uint64s, key by key."""

    fields: tuple[str, ...]
    keys: list[str]
    hashes: bytes


@dataclass(frozen=True)
class AddedKeys:
    """A batch's added keys, recorded without a :class:`KeyOutcome` each: most of a large
    run's outcomes are these, and building a frozen dataclass per key cost more than its row.

    :param contact_ids: key -> the service's contact id.
    :param fingerprints: key -> fingerprint (a key absent here records none).
    :param sent: whether they answer a send (their attempts grow by one).
    """

    contact_ids: Mapping[str, str | None]
    fingerprints: Mapping[str, str]
    sent: bool = False


@dataclass(frozen=True)
class PendingKeys:
    """A batch's pending keys (accepted, not confirmed yet), recorded without a
    :class:`KeyOutcome` each, like :class:`AddedKeys`: a Whippy run records one per contact.

    :param identities: key -> what identifies it in a read-back (JSON-able; empty: nothing).
    :param fingerprints: key -> fingerprint (a key absent here records none).
    :param sent: whether they answer a send (their attempts grow by one).
    """

    identities: Mapping[str, Any]
    fingerprints: Mapping[str, str]
    sent: bool = False


@dataclass(frozen=True)
class KeyOutcome:
    """One key's outcome in a batch, as recorded."""

    key: str
    status: str
    reason: str | None = None
    detail: str | None = None
    fingerprint: str | None = None
    service_contact_id: str | None = None
    #: What identifies a pending key in a read-back (the adapter's JSON-able form).
    identity: Any = None
    #: Whether this outcome is the answer to a send of the key (its attempts grow by one).
    sent: bool = False


@dataclass(frozen=True)
class Scope:
    """The state of one sequence of one account of a service."""

    service: str
    account: str
    sequence_id: str


#: The holder a deferred run leaves on its lease: the task that resumes it takes it over.
DEFERRED_HOLDER = "deferred"


@dataclass(frozen=True)
class LeaseRow:
    """Who holds a lease on a scope, and until when (UTC)."""

    run_id: str
    lease_group: str
    holder: str
    expires_at: datetime
