"""What the sync engine needs from a service: the contract an adapter implements.

The engine (:mod:`~airflow_provider_sequences.sync`) owns this contract; each service's adapter
(``airflow_provider_sequences.adapters``) implements it on top of the service's hook. Nothing
here knows a service or Airflow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

import pandas as pd

from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.sync.pending import FoundKeys, PendingSet


@dataclass(frozen=True)
class FieldRules:
    """What a service accepts: which target fields exist and how each is checked."""

    #: Plain target fields, e.g. ``{"email", "firstName", ...}``.
    known_fields: frozenset[str]
    #: Dotted families allowed: ``{"customFields"}`` lets Reply take ``customFields.Tier``.
    prefixes: frozenset[str]
    #: Fields checked and normalised as email addresses.
    email_fields: frozenset[str]
    #: Fields checked and normalised to E.164.
    phone_fields: frozenset[str]
    #: Fields that must hold whole numbers, e.g. Whippy's ``birth_date.day``.
    integer_fields: frozenset[str]
    #: Longest text any field may hold, in characters (``None``: no limit).
    max_length: int | None = 255
    #: Fields every row must have: Whippy ``{"phone"}``, Reply ``{"email"}`` without contact ids.
    required: frozenset[str] = frozenset()
    #: The service's name, used in messages ("Reply fields are: ...").
    service: str = ""

    def accepts(self, target: str) -> bool:
        """Whether ``target`` names a field of the service."""
        if target in self.plain_fields():
            return True
        prefix, dot, name = target.partition(".")
        return bool(dot) and bool(name) and prefix in self.prefixes

    def plain_fields(self) -> frozenset[str]:
        """Every field named in full: known, email, phone and integer fields."""
        return self.known_fields | self.email_fields | self.phone_fields | self.integer_fields


#: What identifies a pending contact in a read-back, in the adapter's own form (see
#: :meth:`ServiceAdapter.identity`): JSON-able, since the state stores it, and small, since a
#: run may hold a million. Empty (``{}``) stands for one not known yet, read from the state.
Identity: TypeAlias = Any


@dataclass
class BatchOutcome:
    """What the service said about one batch, by key.

    :param added: keys enrolled, with the service's contact id when known.
    :param failed: keys not enrolled, with (reason, detail).
    :param pending: keys accepted but not yet confirmed, with what identifies them in a read-back.
    :param found: keys a read-back found enrolled, without contact ids, held as hashes of the
        pending set it read (:meth:`ServiceAdapter.confirm`; ten million keys are not listed).
    """

    added: dict[str, str | None] = field(default_factory=dict)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    pending: dict[str, Identity] = field(default_factory=dict)
    found: FoundKeys | None = None

    def merge(self, other: BatchOutcome) -> None:
        self.added.update(other.added)
        self.failed.update(other.failed)
        self.pending.update(other.pending)
        if other.found:
            self.added.update(dict.fromkeys(other.found))

    @property
    def added_count(self) -> int:
        """How many keys are enrolled: :attr:`added` and :attr:`found`."""
        return len(self.added) + (len(self.found) if self.found is not None else 0)

    def all_added(self) -> dict[str, str | None]:
        """:attr:`added` and :attr:`found` in one dict (for a few keys: it lists them all)."""
        return {**self.added, **dict.fromkeys(self.found or ())}


class ServiceAdapter(ABC):
    """Turns prepared contacts into one service's bulk requests.

    An adapter reads its settings once (:meth:`preflight`, read-only requests), then sends
    batches (:meth:`push`) of at most :attr:`max_batch_size` contacts. A batch the service
    rejects as a whole raises :class:`SequencesApiError`; the engine splits it.
    """

    #: Short lowercase service name, as stored in the sync state.
    service: ClassVar[str]
    #: The service's name in messages people read ("Whippy accepted this contact ...").
    display_name: ClassVar[str]
    #: The service's own reasons (the slugs it answers with) that a later run retries only
    #: when the row's data changed: its answer will not change by itself. The provider's own
    #: such reasons are :data:`~airflow_provider_sequences.sync.outcomes.PROVIDER_RETRY_WHEN_CHANGED`.
    retry_when_changed: ClassVar[frozenset[str]] = frozenset()
    #: The largest batch the service accepts in one call.
    max_batch_size: ClassVar[int]
    #: Whether the adapter may be handed again a batch an earlier send may have applied, as
    #: ``resent_keys`` (Reply reads the sequence and sends only those not in it); when False
    #: the engine reads such keys back first (:meth:`confirm`) and sends only those not found
    #: (Whippy would message people again).
    resend_is_safe: ClassVar[bool] = True
    #: Contact fields the service matches an incoming contact to an existing one by: rows of
    #: one run sharing a value would become one contact, so the run sends the first only.
    match_fields: ClassVar[tuple[str, ...]] = ()

    _rules: FieldRules

    @property
    def rules(self) -> FieldRules:
        """Fields the service accepts and how each is checked (after :meth:`preflight`)."""
        return self._rules

    @abstractmethod
    def preflight(self) -> None:
        """Check the settings against the service with reads only; raise
        :class:`~airflow_provider_sequences.exceptions.SyncConfigurationError` when they cannot work."""

    def start(self, *, fresh_state: bool) -> None:
        """Called once before a run sends anything. ``fresh_state``: the sync state holds
        nothing about this sequence (a first night, or a state deleted), so contacts already
        in it were not put there by an earlier run."""
        return None  # most adapters need nothing

    @abstractmethod
    def push(self, batch: pd.DataFrame, *, resent_keys: frozenset[str] = frozenset()) -> BatchOutcome:
        """Send one batch; ``resent_keys`` may already have been applied by an earlier attempt."""

    def confirm(self, pending: PendingSet, *, timeout: float) -> BatchOutcome:
        """Read back what ``pending`` keys became; services that answer at once have nothing to do.

        ``pending`` may hold millions of keys: read it in slices, as often as needed, and answer
        the keys found with :attr:`BatchOutcome.found` rather than a dict of them."""
        return BatchOutcome(added=dict.fromkeys(pending.keys()))

    @abstractmethod
    def is_row_error(self, error: SequencesApiError) -> bool:
        """Whether a rejected batch was refused for its rows (split it) rather than for the
        request's settings (stop: every batch would fail the same way)."""

    def may_be_row_error(self, error: SequencesApiError) -> bool:
        """Whether a rejected batch may have been refused for one of its rows although the
        answer names none (the engine splits it within a budget)."""
        return False

    @property
    @abstractmethod
    def request_counts(self) -> tuple[int, int]:
        """(write requests, read requests) sent so far."""

    def identity(self, row: Mapping[str, Any]) -> Identity | None:
        """What identifies a contact in a later read-back (only services that confirm need it).

        ``row`` is a prepared contact, with its ``key``. :meth:`confirm` gets it back as given,
        or as JSON loaded from the state (a tuple comes back a list)."""
        return None
