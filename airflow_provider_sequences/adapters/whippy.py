"""Whippy adapter: up to 4,000 contacts per call, then read the enrolment back."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from airflow_provider_sequences.adapters.base import HookAdapter, column_values, present
from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    SequencesApiError,
    SyncConfigurationError,
)
from airflow_provider_sequences.hooks.base import PageGuard, describe_shape
from airflow_provider_sequences.hooks.whippy import (
    WHIPPY_MAX_CONTACTS_PER_CALL,
    WHIPPY_MAX_PAGE,
    WhippyHook,
    page_total,
)
from airflow_provider_sequences.sync.contract import BatchOutcome, FieldRules
from airflow_provider_sequences.sync.outcomes import CONTACT_ALREADY_IN_SEQUENCE, NOT_ENROLLED
from airflow_provider_sequences.sync.state import SyncState

WHIPPY_PLAIN_FIELDS = frozenset({"phone", "email", "name", "external_id", "language", "default_channel_id"})
NESTED = ("address", "birth_date", "properties")
#: Step contacts in these statuses are in their step; the others left it (or never started it
#: again: a contact that finished the sequence keeps its old, finished step contact).
CURRENT_STATUSES = frozenset({"pending", "active"})
ADDRESS_PARTS = ("address_line_one", "address_line_two", "city", "state", "country", "post_code")
BIRTH_DATE_PARTS = ("day", "month", "year")


def _key_hashes(keys: list[str]) -> npt.NDArray[np.uint64]:
    hashes: npt.NDArray[np.uint64] = pd.util.hash_array(np.asarray(keys, dtype=object), categorize=False)
    return hashes


def whippy_rules(*, email_required: bool) -> FieldRules:
    """Whippy's fields; an email step also needs an email."""
    return FieldRules(
        known_fields=WHIPPY_PLAIN_FIELDS
        | {f"address.{part}" for part in ADDRESS_PARTS}
        | {f"birth_date.{part}" for part in BIRTH_DATE_PARTS},
        prefixes=frozenset({"properties"}),
        email_fields=frozenset({"email"}),
        phone_fields=frozenset({"phone"}),
        integer_fields=frozenset({f"birth_date.{part}" for part in BIRTH_DATE_PARTS}),
        max_length=255,
        required=frozenset({"phone", "email"} if email_required else {"phone"}),
        service="Whippy",
    )


def to_items(columns: Mapping[str, list[Any]], rows: int) -> list[dict[str, Any]]:
    """Every row as a ``to`` item, with ``address.city`` and the like nested, from the batch's
    columns as :func:`column_values` gives them (``None`` where missing); fields in the
    columns' order."""
    items: list[dict[str, Any]] = [{} for _ in range(rows)]
    groups: dict[str, list[dict[str, Any] | None]] = {}
    for name, values in columns.items():
        if name in WHIPPY_PLAIN_FIELDS:
            for item, value in zip(items, values, strict=True):
                if value is not None:
                    item[name] = value
            continue
        group, _, part = name.partition(".")
        if group not in NESTED or not part:
            continue
        # Each row's dict of this group, made (and put in the item) at its first value.
        inner = groups.setdefault(group, [None] * rows)
        birth_date = group == "birth_date"
        for at, value in enumerate(values):
            if value is None:
                continue
            held = inner[at]
            if held is None:
                held = inner[at] = items[at][group] = {}
            held[part] = int(value) if birth_date else value
    return items


#: Separates the parts of a stored identity (see :func:`whippy_identity`).
_SEP = "\x1f"


def _identities(
    keys: Sequence[str | None], columns: Mapping[str, list[Any]]
) -> Iterator[str | WhippyIdentity | None]:
    """:meth:`WhippyAdapter.identity` of every row, from the batch's columns: one string,
    ``phone<US>email<US>external_id`` (a run may hold a million pending keys: a string costs a
    third of a tuple of three), or the tuple when a value holds the separator."""
    missing = [None] * len(keys)
    external_ids = columns.get("external_id", missing)
    phones = columns.get("phone", missing)
    emails = columns.get("email", missing)
    for external_id, phone, email in zip(external_ids, phones, emails, strict=True):
        if phone is None and email is None and external_id is None:
            yield None
            continue
        parts = (
            "" if phone is None else str(phone),
            "" if email is None else str(email).lower(),
            "" if external_id is None else str(external_id),
        )
        if any(_SEP in part for part in parts):
            yield parts[0] or None, parts[1] or None, parts[2] or None
        else:
            yield _SEP.join(parts)


#: What identifies a pending contact in a read-back: its (E.164 phone, lowercase email, external
#: id), any of them ``None``. Whippy's step contacts may not show an external id (its own
#: client receives ``contact: {id, name, email, phone}``), so the phone and the email are
#: always kept; the external id counts only when a step contact shows one.
WhippyIdentity = tuple[str | None, str | None, str | None]


def whippy_identity(value: Any) -> WhippyIdentity | None:
    """An identity as (phone, lowercase email, external id), from what :meth:`WhippyAdapter.identity`
    makes and the state stores: the joined string, the list JSON makes of a triple, and the forms
    of earlier versions (an external id alone, a (phone, email) pair, a ``{phone, email,
    external_id}`` dict)."""
    if isinstance(value, str):
        if _SEP in value:
            parts = value.split(_SEP, 2)
            return parts[0] or None, parts[1] or None, parts[2] or None
        return (None, None, value) if value else None
    if isinstance(value, tuple) and len(value) == 3:
        return value  # as :meth:`WhippyAdapter.identity` made it (lowering the email again would copy it)
    if isinstance(value, Mapping):
        value = (value.get("phone"), value.get("email"), value.get("external_id"))
    if isinstance(value, (list, tuple)) and len(value) in (2, 3):
        phone = str(value[0]) if value[0] else None
        email = str(value[1]).lower() if value[1] else None
        external_id = str(value[2]) if len(value) == 3 and value[2] else None
        return (phone, email, external_id) if phone or email or external_id else None
    return None


@dataclass
class _Identities:
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


class _Waiting:
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

    def see(self, seen: _Identities) -> None:
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


#: How a contact stands in the sequence, from a read of its members: the step contact that
#: counts (a current one before a finished one) as (step id, status).
_Standing = tuple[str, str]


class _Members:
    """The sequence's step contacts before the sync's first write, by what Whippy matches an
    incoming contact on: its phone, its lowercase email, and its external id when shown."""

    def __init__(self) -> None:
        self.read = 0
        self._by: dict[str, dict[str, _Standing]] = {"phone": {}, "email": {}, "external_id": {}}

    def add(self, item: Mapping[str, Any]) -> None:
        self.read += 1
        contact = item.get("contact") or {}
        standing = (str(item.get("step_id") or ""), str(item.get("status") or "").lower())
        for name in ("phone", "email", "external_id"):
            value = contact.get(name)
            if not value:
                continue
            value = str(value).lower() if name == "email" else str(value)
            held = self._by[name].get(value)
            if held is None or (held[1] not in CURRENT_STATUSES and standing[1] in CURRENT_STATUSES):
                self._by[name][value] = standing

    def __len__(self) -> int:
        return self.read

    def standing(self, phone: Any, email: Any, external_id: Any) -> _Standing | None:
        """How the contact Whippy would match these values to stands in the sequence, if at all."""
        found: _Standing | None = None
        for name, value in (("external_id", external_id), ("phone", phone), ("email", email)):
            if value is None:
                continue
            value = str(value).lower() if name == "email" else str(value)
            held = self._by[name].get(value)
            if held is not None and (found is None or held[1] in CURRENT_STATUSES):
                found = held
                if held[1] in CURRENT_STATUSES:
                    break
        return found


@dataclass(frozen=True)
class WhippyEnrolment:
    """How contacts are added (the create-sequence-contacts call's options)."""

    from_channel: str | None = None
    step_id: str | None = None
    schedule_at: datetime | str | None = None
    custom_object_id: str | None = None
    custom_data_resource: str = "contact"
    voice_options: dict[str, Any] | None = None


class WhippyAdapter(HookAdapter):
    """Enrols contacts in a Whippy sequence: one write per 4,000 contacts, then a read-back.

    Whippy answers 202 and works in the background, silently ignoring contacts that lack
    what the step's channel needs or that are active in another step, so an accepted contact
    is only *pending* until :meth:`confirm` sees it in the step.

    Reading back: the step's count is read before the run's first write; :meth:`confirm` then
    reads only the step contacts past what it already read (the *tail*: contacts this run
    created are appended there in practice). The API does not document the list's order, so
    the tail is an optimisation only: before a key is declared not enrolled, or a lost batch is
    sent again, one full read of the step proves it absent.

    :param hook: the Whippy hook.
    :param sequence_id: the sequence to enrol into.
    :param enrolment: the call's options.
    :param poll_interval: seconds between read-backs while waiting for the enrolment.
    :param stable_polls: polls in a row without the step's count moving after which Whippy's
        background work counts as over even though some accepted contacts never arrived (it
        ignored them); used to decide when a batch whose answer was lost may be sent again.
    """

    service = "whippy"
    display_name = WhippyHook.hook_name
    max_batch_size: ClassVar[int] = WHIPPY_MAX_CONTACTS_PER_CALL
    resend_is_safe: ClassVar[bool] = False
    match_fields: ClassVar[tuple[str, ...]] = ("phone", "email", "external_id")

    def __init__(
        self,
        hook: WhippyHook,
        sequence_id: str,
        *,
        enrolment: WhippyEnrolment | None = None,
        poll_interval: float = 2.0,
        stable_polls: int = 3,
    ) -> None:
        self.hook = hook
        self.sequence_id = str(sequence_id).strip()
        self.enrolment = enrolment or WhippyEnrolment()
        self.step_id: str | None = self.enrolment.step_id
        self.step_channel: str | None = None
        self.sequence_title: str | None = None
        self._rules = whippy_rules(email_required=False)
        self.poll_interval = poll_interval
        self.stable_polls = max(int(stable_polls), 1)
        #: Seconds already waited elsewhere (a trigger) before :meth:`confirm`, for the details.
        self.waited: float | None = None
        #: Keys whose write's answer was lost (maybe applied, maybe not) and not sent again since.
        self._uncertain: set[str] = set()
        #: Their ``to`` items (this process only), for one re-send once the step proves them absent.
        self._lost: dict[str, dict[str, Any]] = {}
        self._lost_at: float | None = None  # time.monotonic() of the last write whose answer was lost
        self._accepted_at: float | None = None  # ... and of the last write Whippy answered
        #: Hashes of the keys this adapter wrote (their step contacts are in the tail), an
        #: array per write: as Python strings a million keys would cost ten times as much,
        #: for one question per :meth:`confirm`.
        self._pushed: list[npt.NDArray[np.uint64]] = []
        self._writes = 0
        #: The step's count before this adapter's first write, and the offset read up to since.
        self._baseline: int | None = None
        self._resumed = False
        self._cursor: int | None = None
        #: Step contacts read in the tail (current ones) that matched no key, for later
        #: :meth:`confirm` calls.
        self._seen = _Identities()
        #: (count, offset) of the pages read from offset 0 on while the count stayed the same.
        self._span: tuple[int, int] | None = None
        #: The sequence's members before the first write, when :meth:`read_members` read them.
        self._members: _Members | None = None
        #: Whether Whippy accepted a write of this adapter (its settings work).
        self.accepted_writes = 0

    def preflight(self) -> None:
        try:
            sequence = self.hook.get_sequence(self.sequence_id)
        except SequencesApiError as exc:
            if exc.status == 404:
                raise SyncConfigurationError(f"Whippy sequence {self.sequence_id} does not exist") from None
            raise
        self.sequence_title = sequence.get("title")
        if sequence.get("status") == "draft":
            raise SyncConfigurationError(
                f"Whippy sequence {self.sequence_id} ({self.sequence_title!r}) is a draft and accepts no "
                "contacts: activate it in Whippy first"
            )
        # The fields of a sequence are undocumented: used when present, never required, but
        # for a list of steps to enrol into when no step_id says which.
        listed = sequence.get("steps")
        listed = listed if isinstance(listed, list) else None
        steps = [s for s in listed or [] if isinstance(s, Mapping) and isinstance(s.get("id"), (str, int))]
        if listed is not None and len(steps) != len(listed):
            # Steps without an id: an answer this adapter does not know, not a verdict.
            raise self.hook.unexpected(
                "GET",
                f"/v1/sequences/{self.sequence_id}",
                200,
                f"an answer of unexpected shape: steps are {describe_shape(listed)}",
            )
        if listed is not None and not steps:
            raise SyncConfigurationError(f"Whippy sequence {self.sequence_id} has no steps")
        if all(isinstance(s.get("position"), (int, float)) for s in steps):
            steps.sort(key=lambda s: s["position"])  # else in the order Whippy lists them
        by_id = {str(step["id"]): step for step in steps}
        if self.step_id is None:
            if not steps:
                raise SyncConfigurationError(
                    f"Whippy's answer for sequence {self.sequence_id} lists no steps: set step_id to "
                    "the step to enrol into"
                )
            self.step_id = str(steps[0]["id"])
        elif by_id and self.step_id not in by_id:
            raise SyncConfigurationError(
                f"step_id {self.step_id} is not a step of Whippy sequence {self.sequence_id}; "
                f"its steps are {list(by_id)}"
            )
        # Unknown channel type: email is not required; contacts Whippy ignores for lack of one
        # are reported notEnrolled by the read-back.
        self.step_channel = str(by_id.get(self.step_id, {}).get("channel_type") or "")
        self._rules = whippy_rules(email_required=self.step_channel == "email")
        if self.enrolment.from_channel:
            self._check_channel(self.enrolment.from_channel)
        resource = self.enrolment.custom_data_resource
        if resource not in ("contact", "step_contact"):
            raise SyncConfigurationError(
                f"custom_data_resource must be 'contact' or 'step_contact', not {resource!r}"
            )

    def _check_channel(self, wanted: str) -> None:
        channels = [c for c in self.hook.iter_channels() if isinstance(c, Mapping)]
        known = {str(c.get(f)) for c in channels for f in ("phone", "email") if c.get(f)}
        if "@" in wanted and not any("email" in c for c in channels):
            # Whippy's own client shows channels without an email: an email ``from`` cannot be
            # checked here, and Whippy's answer to the first write says whether it is one.
            self.hook.log.warning(
                "Whippy lists its channels without emails, so from_channel cannot be checked before sending"
            )
            return
        if wanted not in known:
            raise SyncConfigurationError(
                f"from_channel {wanted!r} is not a channel of this Whippy organization; "
                f"its channels are {sorted(known)}"
            )

    def is_row_error(self, error: SequencesApiError) -> bool:
        fields = [e.get("field") or "" for e in error.errors]
        return bool(fields) and all(f.startswith("to[") for f in fields)

    def may_be_row_error(self, error: SequencesApiError) -> bool:
        """A 422 that names no field: Whippy documents its errors as descriptions only, so the
        body may be about one contact of ``to`` without saying which."""
        return error.status == 422 and not error.errors

    # -- members before the first night -------------------------------------------------------

    def read_members(self) -> int:
        """Read every step contact of the sequence (every step, every status) before the first
        write, so that :meth:`push` sends nobody who is in it already: Whippy would reprocess
        (message again) a contact sent to the step it is in. For a sync state that knows
        nothing of the sequence yet (a first night, or a deleted state). Returns how many
        step contacts were read."""
        members = _Members()
        for item in self.hook.iter_sequence_contacts(self.sequence_id):
            if isinstance(item, Mapping):
                members.add(item)
        self._members = members
        self.hook.log.info(
            "Read the %d step contacts of Whippy sequence %s before the first write: members are not sent",
            len(members),
            self.sequence_id,
        )
        return len(members)

    def start(self, *, fresh_state: bool) -> None:
        if fresh_state and self._members is None:
            self.read_members()

    def read_members_unless_known(self, state: SyncState) -> bool:
        """:meth:`read_members` when no run of this sync state has finished yet: then the state
        may not know everyone in the sequence (a first night, a deleted state, or a retry of a
        first night that died). Returns whether they were read."""
        if self._members is not None or state.any_run_finished():
            return False
        self.read_members()
        return True

    def _members_of(self, batch: pd.DataFrame, outcome: BatchOutcome) -> pd.DataFrame:
        """The batch without the rows Whippy would match to a member of the sequence; those are
        ``added`` (current in the target step) or ``contactAlreadyInSequence`` in ``outcome``."""
        members = self._members
        if not members:
            return batch
        missing = [None] * len(batch)
        columns = [
            column_values(batch[name]) if name in batch.columns else missing
            for name in ("phone", "email", "external_id")
        ]
        keep: list[bool] = []
        for key, phone, email, external_id in zip(batch["key"].tolist(), *columns, strict=True):
            standing = members.standing(phone, email, external_id)
            keep.append(standing is None)
            if standing is None:
                continue
            step, status = standing
            if step == self.step_id and status in CURRENT_STATUSES:
                outcome.added[key] = None
            elif status in CURRENT_STATUSES:
                outcome.failed[key] = (
                    CONTACT_ALREADY_IN_SEQUENCE,
                    f"already {status} in step {step} of Whippy sequence {self.sequence_id} before this "
                    "sync first ran: not sent (Whippy ignores a contact active in another step)",
                )
            else:
                outcome.failed[key] = (
                    CONTACT_ALREADY_IN_SEQUENCE,
                    f"went through Whippy sequence {self.sequence_id} before this sync first ran (step "
                    f"{step}, {status or 'no status'}): not sent, so that nobody gets the sequence twice",
                )
        return batch if all(keep) else batch[keep]

    def identity(self, row: Mapping[str, Any]) -> str | WhippyIdentity | None:
        """The row's phone, lowercase email and external id, as one string (see
        :func:`whippy_identity`); :class:`_Waiting` says how a read-back matches them."""
        columns = {
            name: [row[name] if name in row and present(row[name]) else None]
            for name in ("external_id", "phone", "email")
        }
        return next(_identities([row.get("key")], columns))

    def push(self, batch: pd.DataFrame, *, resent_keys: frozenset[str] = frozenset()) -> BatchOutcome:
        outcome = BatchOutcome()
        batch = self._members_of(batch, outcome)
        if batch.empty:
            return outcome
        fields = [c for c in batch.columns if c in WHIPPY_PLAIN_FIELDS or c.split(".", 1)[0] in NESTED]
        # Column by column: a 4,000-row batch as records, item by item, cost more CPU than
        # its request (the identities are the ones :meth:`identity` makes of each record).
        columns = {name: column_values(batch[name]) for name in fields}
        keys = batch["key"].tolist()
        items = to_items(columns, len(keys))
        self._writes += 1
        self._pushed.append(_key_hashes(keys))
        try:
            self._create(items)
        except OutcomeUnknownError:
            # Maybe applied: never re-send blindly (a contact re-sent to its step is messaged
            # again); the read-back will tell, and :meth:`confirm` may send them once more.
            self._uncertain.update(keys)
            self._lost.update(zip(keys, items, strict=True))
            self._lost_at = time.monotonic()
        else:
            self._accepted_at = time.monotonic()
            self.accepted_writes += 1
        outcome.pending = dict(zip(keys, _identities(keys, columns), strict=True))
        return outcome

    def _create(self, items: list[dict[str, Any]]) -> None:
        custom_data = None
        if self.enrolment.custom_object_id:
            custom_data = {
                "custom_object_id": self.enrolment.custom_object_id,
                "resource": self.enrolment.custom_data_resource,
            }
        self.hook.create_sequence_contacts(
            self.sequence_id,
            items,
            from_=self.enrolment.from_channel,
            step_id=self.step_id,
            schedule_at=self.enrolment.schedule_at,
            custom_data=custom_data,
            voice_options=self.enrolment.voice_options,
        )

    def step_total(self) -> int:
        """How many contacts the target step holds (one cheap read).

        Before the first write, it is also where this run's step contacts start.
        """
        total: int = self.hook.count_sequence_contacts(self.sequence_id, step_ids=[str(self.step_id)])
        if self._baseline is None and self._writes == 0:
            self._baseline = self._cursor = total
        return total

    def confirm(
        self, pending: dict[str, Any], *, timeout: float, poll_interval: float | None = None
    ) -> BatchOutcome:
        """Read the step back until every pending key is seen or ``timeout`` seconds pass.

        ``pending`` becomes the outcome's ``added`` (see :class:`_Waiting`).

        Each poll reads the step past the offset already read: one request when nothing moved,
        and the poll's page is the first of the new contacts when something did. Keys not seen
        are declared ``notEnrolled`` only after the whole step was read while its count stood
        still (see :meth:`_proven`). Batches whose answer was lost are sent again once, in this
        call, when :meth:`_resend_due` says Whippy is done and such a read proves them absent.
        """
        outcome = BatchOutcome()
        foreign = self._not_pushed(pending)
        waiting = _Waiting(pending, foreign)
        waiting.see(self._seen)
        deadline = time.monotonic() + timeout
        base_interval = self.poll_interval if poll_interval is None else poll_interval
        interval = base_interval
        # Keys an earlier attempt or run sent may be anywhere in the step: read it all first.
        # So may this run's, when the step's count before its first write is not known.
        full_first = self._baseline is None or any(waiting.waits_for(key) for key in foreign)
        last: int | None = None
        unchanged = 0
        moved_at = time.monotonic()
        working = False  # whether Whippy applied any of this run's writes yet
        while waiting:
            polled_at = time.monotonic()  # when the count was read (the read may take long)
            try:
                total = self._read(0 if full_first else self._cursor or 0, waiting)
            except SequencesApiError as exc:
                if not exc.is_retryable or time.monotonic() >= deadline:
                    raise
                # A read that failed after the hook's retries is one poll lost, not the run.
                self.hook.log.warning("Reading the step back failed; trying again later: %s", exc)
            else:
                full_first = False
                if total != last:
                    unchanged, moved_at = 0, polled_at
                else:
                    unchanged += 1
                last = total
                working = waiting.found_written > 0
                due = waiting and working and self._resend_due(waiting, unchanged, moved_at)
                if due and self._prove(waiting) and self._resend(waiting):
                    unchanged, interval = 0, base_interval
            # The last read is at the deadline, not up to one interval before it.
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            self.hook.log.info(
                "Whippy has confirmed %d of %d contacts; reading again in %.0f s",
                len(pending) - len(waiting),
                len(pending),
                min(interval, left),
            )
            time.sleep(min(interval, left))
            interval = min(interval * 2, 30.0)
        if waiting and not self._proven():
            # The tail is no proof of absence: the list's order is not documented.
            self._read(0, waiting)
        waited = timeout if self.waited is None else self.waited
        outcome.added, missing = waiting.outcome()
        for key in missing:
            outcome.failed[key] = (NOT_ENROLLED, self._not_enrolled_detail(key, waited))
        return outcome

    def resume_after(self, offset: int) -> None:
        """Confirm, in another process, contacts that an adapter of this same run wrote after
        the step held ``offset`` contacts: the read-back starts at that offset, as that
        adapter's would have, instead of reading the whole step (which grows every night).
        A key not found there is still looked for in the whole step before it is declared
        ``notEnrolled``."""
        self._baseline = self._cursor = offset
        self._resumed = True

    def _not_pushed(self, pending: Collection[str]) -> set[str]:
        """The keys this adapter did not write (usually none).

        By 64-bit hash: a key taken for written by a collision (odds about 1e-13 per key) would
        be read in the tail first and still be found by the full read before it is declared
        not enrolled.
        """
        if self._resumed:
            return set()  # written by the adapter this one resumes (see resume_after)
        if not self._pushed or not pending:
            return set(pending)
        written = np.sort(np.concatenate(self._pushed))
        foreign: set[str] = set()
        keys = iter(pending)
        while part := list(islice(keys, 100_000)):
            hashes = _key_hashes(part)
            at = np.minimum(np.searchsorted(written, hashes), len(written) - 1)
            foreign.update(key for key, hit in zip(part, written[at] == hashes, strict=True) if not hit)
        return foreign

    def _read(self, start: int, waiting: _Waiting) -> int:
        """Read the step's contacts from offset ``start`` to its end, taking the keys found out of
        ``waiting`` (into the outcome's ``added``); returns the step's count on the last page.

        Only step contacts that are pending or active count: a contact that went through the
        step before keeps its finished step contact there, and Whippy may ignore it now.
        Contacts past the tail's cursor that matched no key are remembered for later calls.

        Each page is requested as soon as the one before it arrived, and fetched (by one other
        thread) while that one is matched: the same requests in the same order, but Whippy
        builds a page while this process reads the last one.
        """
        offset = start
        guard = PageGuard(self.hook, f"/v1/sequences/{self.sequence_id}/contacts", WHIPPY_MAX_PAGE)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="whippy-read") as fetcher:
            following = self._fetch(fetcher, offset)
            while True:
                page = following.result()
                items = page.get("data") or []
                given = page_total(page)
                # Without a total, the end is the first empty page (see WhippyHook.pages).
                total = offset + len(items) if given is None else given
                done = not items or (given is not None and offset + len(items) >= total)
                guard.check(items, offset=offset, more=given is not None and offset + len(items) < given)
                if not done:
                    following = self._fetch(fetcher, offset + len(items))
                offset = self._take_page(waiting, items, total, offset)
                if done:
                    break
        if self._cursor is None:
            # The first read: what follows is the tail (the start of this run's contacts only
            # when nothing was written yet).
            self._cursor = total
            if self._writes == 0:
                self._baseline = total
        elif total < self._cursor:
            self._cursor = total  # the step shrank: the final full read is the proof, not the tail
        return total

    def _fetch(self, fetcher: ThreadPoolExecutor, offset: int) -> Future[dict[str, Any]]:
        return fetcher.submit(
            self.hook.sequence_contacts_page, self.sequence_id, offset, step_ids=[str(self.step_id)]
        )

    def _take_page(self, waiting: _Waiting, items: list[Any], total: int, offset: int) -> int:
        """Match one page read at ``offset``; returns the offset after it."""
        tail = self._cursor if self._cursor is not None else total
        # Kept for later calls only when it matched no key now: a million matched ones would
        # cost more than the run's keys, and the final full read (or the proof before a
        # re-send) sees any contact again anyway.
        for item in waiting.see_page(items, tail - offset):
            self._seen.add(item)
        # Pages read from offset 0 on, one after the other, while the count stays the same.
        if offset == 0:
            self._span = (total, len(items))
        elif self._span == (total, offset):
            self._span = (total, offset + len(items))
        else:
            self._span = None
        offset += len(items)
        if self._cursor is not None and self._cursor < offset <= total:
            self._cursor = offset  # page by page: a read that fails half-way keeps what it read
        return offset

    def _proven(self) -> bool:
        """Whether the last pages read cover the whole step, from offset 0 on, with its count the
        same on every page since: then a contact not seen is not in the step (whatever order the
        list has, nothing was added or removed while it was read)."""
        return self._span is not None and self._span[1] >= self._span[0]

    def _prove(self, waiting: _Waiting) -> bool:
        """Make :meth:`_proven` true with a full read if needed; False when the count moved or the
        read failed (the next poll tries again)."""
        if not self._proven():
            try:
                self._read(0, waiting)
            except SequencesApiError as exc:
                if not exc.is_retryable:
                    raise
                self.hook.log.warning("Reading the whole step failed; trying again later: %s", exc)
                return False
        return self._proven()

    def _resend_due(self, waiting: _Waiting, unchanged: int, moved_at: float) -> bool:
        """Whether Whippy is done with what it accepted, so that a lost batch still absent was
        never applied and may be sent again.

        The answer to a write can be lost before Whippy saw it (a reset: nothing happened) or
        after (the 202 was lost: the contacts arrive later). Sending the second kind again
        would message its contacts twice, so a batch is sent again only when all of these hold:

        - its contacts are still waiting and it was not sent again already (once per run);
        - Whippy applied some of this run's writes (a step that shows none of them may mean its
          queue has not started: the caller checks) and the step's count stood still for a poll;
        - every contact of a write Whippy answered is in the step, or the count stood still
          for ``stable_polls`` polls (some were ignored and will never arrive);
        - since the lost write, twice the time Whippy took to show the last answered write
          has passed (from that write to the poll where the count last moved);
        - then a full read, with the count unchanged, does not find them (the caller).

        What remains is Whippy applying one request far later than the ones around it; the
        task's retry, which re-sends ``notEnrolled`` keys, carries the same risk later.
        """
        if not self._lost or unchanged < 1 or self._accepted_at is None or self._lost_at is None:
            return False
        if not any(key in self._lost for key in waiting.remaining()):
            return False
        certain_missing = any(key not in self._uncertain for key in waiting.remaining())
        if certain_missing and unchanged < self.stable_polls:
            return False
        lag = max(moved_at - self._accepted_at, 0.0)
        return time.monotonic() - self._lost_at >= 2 * lag

    def _resend(self, waiting: _Waiting) -> bool:
        """Send the lost batches' contacts still waiting once more (up to 4,000 a call).
        Returns whether any call was answered."""
        keys = [key for key in waiting.remaining() if key in self._lost]
        items = {key: self._lost.pop(key) for key in keys}
        self._lost.clear()  # once per run: what is not sent now is left to the task's retry
        answered = False
        for first in range(0, len(keys), self.max_batch_size):
            chunk = keys[first : first + self.max_batch_size]
            self.hook.log.info(
                "Whippy never showed %d contacts whose write's answer was lost, and its work is "
                "over: sending them again, once",
                len(chunk),
            )
            try:
                self._create([items[key] for key in chunk])
            except SequencesApiError as exc:
                # Lost again, or refused: the keys stay uncertain and end notEnrolled; the task's
                # retry handles them as it did before (read back, send what is absent).
                self.hook.log.warning("Sending %d lost contacts again failed: %s", len(chunk), exc)
                continue
            answered = True
            self._accepted_at = time.monotonic()
            self._uncertain.difference_update(chunk)
        return answered

    def _not_enrolled_detail(self, key: str, timeout: float) -> str:
        step = f"step {self.step_id} of sequence {self.sequence_id}"
        if key in self._uncertain:
            return f"the answer to the request that sent this contact was lost, and it is not in {step}"
        return (
            f"Whippy accepted this contact but it was not in {step} after {timeout:.0f} s: Whippy silently "
            f"ignores contacts that lack what {_channel_words(self.step_channel)} needs, contacts active "
            "in another step of the sequence, and, unless the sequence re-adds contacts, contacts that "
            "already went through it"
        )


def _channel_words(channel: str | None) -> str:
    return f"a {channel} step" if channel else "the step's channel"
