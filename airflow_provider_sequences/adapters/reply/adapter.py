"""Reply.io adapter: import contacts in bulk to get their ids, then bulk-add them to a sequence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from airflow_provider_sequences.adapters.base import HookAdapter
from airflow_provider_sequences.adapters.reply.items import (
    IMPORTED,
    ReplyEnrolment,
    contact_items,
    error_slug,
    reply_rules,
)
from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    SequencesApiError,
    SyncConfigurationError,
)
from airflow_provider_sequences.hooks.base import describe_shape
from airflow_provider_sequences.hooks.reply import REPLY_MAX_BULK_IDS, ReplyHook, reply_sequence_id
from airflow_provider_sequences.sync.contract import BatchOutcome, Identity
from airflow_provider_sequences.sync.hashes import Array, HashIndex
from airflow_provider_sequences.sync.outcomes import (
    CONTACT_ALREADY_IN_SEQUENCE,
    CONTACT_LIMIT_EXCEEDED,
    CONTACT_SKIPPED,
    INVALID_INPUT,
    REQUEST_FAILED,
)
from airflow_provider_sequences.sync.pending import PendingSet


class ReplyAdapter(HookAdapter):
    """Enrols contacts in a Reply.io sequence with two requests per batch at most.

    Rows that carry Reply contact ids go straight to the bulk add (one request per 1,000).
    Rows that carry emails are first imported in bulk (an upsert matched by email) to get
    their ids, then bulk-added: two requests per 1,000, never one per contact.

    A contact already in the sequence is never named in a bulk add again: Reply's CLI reports
    that a later start step then moves it forward, and that the refusal of any other re-add
    is the same ``invalidInput`` as a bad contact's. So the adapter reads the sequence's
    contacts (one paged read, kept for the run and updated with what it adds) before the first
    bulk add of a run on a sequence the state knows nothing of, of a run with
    ``start_step_id``, or of a batch with keys an earlier attempt may have sent; and after an
    answer that refused contacts as ``invalidInput``, to tell members from bad contacts. A
    bulk add whose answer was lost is not repeated: its keys are pending, and :meth:`confirm`
    reads the sequence again at the end of the run and sends only those not in it.

    :param hook: the Reply hook.
    :param sequence_id: the sequence to enrol into.
    :param enrolment: the bulk add's options.
    :param with_contact_ids: whether batches carry an ``id`` column of contact ids.
    """

    service = "reply"
    display_name = ReplyHook.hook_name
    #: The contact does not exist, or belongs to someone the key cannot act for.
    retry_when_changed = frozenset({"contactNotFound", "forbidden"})
    max_batch_size: ClassVar[int] = REPLY_MAX_BULK_IDS

    def __init__(
        self,
        hook: ReplyHook,
        sequence_id: int,
        *,
        enrolment: ReplyEnrolment | None = None,
        with_contact_ids: bool = False,
    ) -> None:
        self.hook = hook
        self.sequence_id = reply_sequence_id(sequence_id)
        self.enrolment = enrolment or ReplyEnrolment()
        self.with_contact_ids = with_contact_ids
        self._rules = reply_rules(
            with_contact_ids=with_contact_ids,
            first_name_required=not self.enrolment.first_name_fallback,
        )
        self.sequence_name: str | None = None
        #: Contact ids in the sequence, once read (then kept up to date with this run's adds).
        #: (Contact ids as 64-bit values in a :class:`HashIndex`: 8 bytes an id where a Python
        #: set of ten million ints costs an estimated 600 MB.)
        self._members: HashIndex | None = None
        self._members_first = self.enrolment.start_step_id is not None
        self._limit_reached: str | None = None
        #: Paged reads of the sequence's contacts this adapter made.
        self.member_reads = 0

    def preflight(self) -> None:
        try:
            sequence = self.hook.get_sequence(self.sequence_id)
        except SequencesApiError as exc:
            if exc.status == 404:
                raise SyncConfigurationError(
                    f"Reply sequence {self.sequence_id} does not exist or the acting user cannot see it"
                ) from None
            raise
        self.sequence_name = sequence.get("name")
        name = f"Reply sequence {self.sequence_id} ({self.sequence_name!r})"
        if sequence.get("isArchived") is True:
            # Reply's CLI refuses archived sequences before writing; the server may not.
            raise SyncConfigurationError(f"{name} is archived: restore it in Reply or choose another")
        raw_steps = sequence.get("steps")
        steps = [int(step["id"]) for step in raw_steps or [] if isinstance(step, dict) and "id" in step]
        if isinstance(raw_steps, list) and not raw_steps:
            raise SyncConfigurationError(f"{name} has no steps: add one in Reply before enrolling contacts")
        start_step = self.enrolment.start_step_id
        if start_step is not None and steps and int(start_step) not in steps:
            raise SyncConfigurationError(
                f"start_step_id {start_step} is not a step of {name}; its steps are {steps}"
            )

    def start(self, *, fresh_state: bool) -> None:
        self._members_first = fresh_state or self.enrolment.start_step_id is not None

    def is_row_error(self, error: SequencesApiError) -> bool:
        # Errors pinned to one item or id are about rows; others (startStepId, startFrom) are
        # about the request and would fail every batch.
        fields = [e.get("field") or "" for e in error.errors]
        return bool(fields) and all(f.startswith(("items[", "contactIds[")) for f in fields)

    def identity(self, row: Mapping[str, Any]) -> Identity | None:
        contact_id = row.get("id")
        return {"id": int(contact_id)} if contact_id is not None and not pd.isna(contact_id) else None

    # -- the sequence's contacts -----------------------------------------------------------

    def members(self, *, fresh: bool = False) -> HashIndex:
        """Contact ids in the sequence: read once (every page), then kept with this run's adds."""
        if self._members is None or fresh:
            self.member_reads += 1
            members: list[int] = []
            for item in self.hook.iter_sequence_contacts(self.sequence_id):
                contact_id = item.get("contactId") if isinstance(item, dict) else None
                if isinstance(contact_id, int) and not isinstance(contact_id, bool):
                    members.append(contact_id)
                elif isinstance(contact_id, str) and contact_id.isdigit():
                    members.append(int(contact_id))
            self._members = HashIndex.of(np.unique(_id_values(members)), presorted=True)
        return self._members

    def in_sequence(self, contact_ids: list[int]) -> set[int]:
        """Which of these contacts are in the sequence (see :meth:`members`)."""
        found, _ = self.members().lookup(_id_values(contact_ids))
        return {contact_id for contact_id, member in zip(contact_ids, found.tolist(), strict=True) if member}

    # -- push ------------------------------------------------------------------------------

    def push(self, batch: pd.DataFrame, *, resent_keys: frozenset[str] = frozenset()) -> BatchOutcome:
        outcome = BatchOutcome()
        keys = batch["key"].tolist()
        ids: list[int | None]
        if self.with_contact_ids:
            ids = [int(i) for i in batch["id"].tolist()]
        else:
            ids = self._import(batch, outcome)
        key_by_id: dict[int, str] = {}
        # Rows that are one Reply contact (one email or id under two keys) are added once.
        same_contact: dict[str, int] = {}
        for key, contact_id in zip(keys, ids, strict=True):
            if contact_id is not None and key_by_id.setdefault(contact_id, key) != key:
                same_contact[key] = contact_id
        if key_by_id and (self._members_first or not resent_keys.isdisjoint(key_by_id.values())):
            self._settle_members(key_by_id, resent_keys, outcome)
        if key_by_id:
            self._add(key_by_id, resent_keys, outcome)
        # ... and share the outcome of the first of them.
        for key, contact_id in same_contact.items():
            first = next(k for k, c in zip(keys, ids, strict=True) if c == contact_id)
            if first in outcome.added:
                outcome.added[key] = str(contact_id)
            elif first in outcome.pending:
                outcome.pending[key] = outcome.pending[first]
            elif first in outcome.failed:
                outcome.failed[key] = outcome.failed[first]
        return outcome

    def _settle_members(
        self, key_by_id: dict[int, str], resent_keys: frozenset[str], outcome: BatchOutcome
    ) -> None:
        """Take contacts already in the sequence out of ``key_by_id``: never named again."""
        members = self.in_sequence(list(key_by_id))
        for contact_id in [c for c in key_by_id if c in members]:
            key = key_by_id.pop(contact_id)
            if key in resent_keys:
                # An earlier attempt sent it and never heard back: that send enrolled it.
                outcome.added[key] = str(contact_id)
            else:
                outcome.failed[key] = (
                    CONTACT_ALREADY_IN_SEQUENCE,
                    f"contact {contact_id} is already in Reply sequence {self.sequence_id} (read from the "
                    "sequence before sending); not sent again",
                )

    def _add(self, key_by_id: dict[int, str], resent_keys: frozenset[str], outcome: BatchOutcome) -> None:
        if self._limit_reached is not None:
            for key in key_by_id.values():
                outcome.failed[key] = (CONTACT_LIMIT_EXCEEDED, f"not sent: {self._limit_reached}")
            return
        try:
            answer = self.hook.add_contacts_to_sequence(
                self.sequence_id,
                list(key_by_id),
                remove_from_existing=self.enrolment.remove_from_existing,
                start_step_id=self.enrolment.start_step_id,
                ignore_step_delay=self.enrolment.ignore_step_delay,
                start_from=self.enrolment.start_from,
            )
        except OutcomeUnknownError:
            # Maybe applied: confirm() reads the sequence at the end of the run and sends only
            # the contacts not in it. Sending again now could move a member forward.
            for contact_id, key in key_by_id.items():
                outcome.pending[key] = {"id": contact_id}
            return
        except SequencesApiError as exc:
            if exc.code == "sequenceContact.contactLimitExceeded":
                # The whole request refused: every later batch would be too.
                self._limit_reached = str(exc)
                for key in key_by_id.values():
                    outcome.failed[key] = (CONTACT_LIMIT_EXCEEDED, str(exc))
                return
            raise
        try:
            self._read_answer(answer, key_by_id, resent_keys, outcome)
        except (TypeError, ValueError, AttributeError):
            # Ids that are not numbers, errors that are not objects: not an answer to act on.
            raise self.hook.unexpected(
                "POST",
                f"/v3/sequences/{self.sequence_id}/contact-links/bulk",
                200,
                f"an answer of unexpected shape: {describe_shape(answer)}",
            ) from None

    def _read_answer(
        self,
        answer: Any,
        key_by_id: dict[int, str],
        resent_keys: frozenset[str],
        outcome: BatchOutcome,
    ) -> None:
        answered: set[int] = set()
        for raw_id in answer.get("added") or []:
            contact_id = int(raw_id)
            key = key_by_id.get(contact_id)
            if key is not None:
                outcome.added[key] = str(contact_id)
                answered.add(contact_id)
        if self._members is not None and answered:
            added = np.unique(_id_values(list(answered)))
            known, _ = self._members.lookup(added)
            self._members.add(added[~known])
        refused: dict[int, tuple[str, str]] = {}
        for raw_id, error in (answer.get("notProcessed") or {}).items():
            contact_id = int(raw_id)
            if contact_id in key_by_id:
                slug, detail = error_slug(error)
                refused[contact_id] = (slug, detail or f"Reply did not add contact {raw_id}: {slug}")
                answered.add(contact_id)
        doubtful = [c for c, (slug, _) in refused.items() if slug == INVALID_INPUT]
        # Reply's CLI: a member named again is refused as invalidInput, like a bad contact.
        members = self.in_sequence(list(refused)) if doubtful else set()
        for contact_id, (slug, detail) in refused.items():
            key = key_by_id[contact_id]
            member = contact_id in members or slug == CONTACT_ALREADY_IN_SEQUENCE
            if member and key in resent_keys:
                outcome.added[key] = str(contact_id)
            elif member:
                outcome.failed[key] = (
                    CONTACT_ALREADY_IN_SEQUENCE,
                    f"contact {contact_id} is already in Reply sequence {self.sequence_id}"
                    + ("" if slug == CONTACT_ALREADY_IN_SEQUENCE else f" (Reply answered {slug}: {detail})"),
                )
            else:
                outcome.failed[key] = (slug, detail)
        # Ids Reply answered nothing about: an answer this adapter did not expect, so not a
        # verdict about the contact; a later run reads the sequence before sending them again.
        for contact_id, key in key_by_id.items():
            if contact_id not in answered:
                outcome.failed[key] = (
                    REQUEST_FAILED,
                    f"Reply's answer did not mention contact {contact_id}; the next run checks the sequence",
                )

    def _import(self, batch: pd.DataFrame, outcome: BatchOutcome) -> list[int | None]:
        items = contact_items(batch, first_name_fallback=self.enrolment.first_name_fallback)
        answer = self.hook.import_contacts(items, overwrite_existing=self.enrolment.overwrite_existing)
        results = answer.get("items") or []
        if not all(isinstance(result, dict) for result in results):
            raise self.hook.unexpected(
                "POST", "/v3/contacts/import", 200, f"an answer of unexpected shape: {describe_shape(answer)}"
            )
        ids: list[int | None] = []
        for index, key in enumerate(batch["key"].tolist()):
            result = results[index] if index < len(results) else {}
            status = str(result.get("status") or "").lower()
            contact_id = _contact_id(result.get("id"))
            if status in IMPORTED and contact_id is not None:
                ids.append(contact_id)
                continue
            ids.append(None)
            if status == "skipped":
                # The item may name a teammate's contact (Reply's CLI): never enrol it.
                why = result.get("skipReason") or result.get("error") or "no reason given"
                outcome.failed[key] = (CONTACT_SKIPPED, f"Reply's import skipped this contact ({why})")
            elif status == "failed" or result.get("error"):
                error = result.get("error") or "no reason given"
                outcome.failed[key] = (INVALID_INPUT, f"Reply could not import this contact: {error}")
            else:
                outcome.failed[key] = (
                    REQUEST_FAILED,
                    f"Reply's import answered this item with status {status or 'none'} and "
                    f"{'no id' if contact_id is None else 'an id'}; retried by the next run",
                )
        return ids

    # -- after a lost answer ---------------------------------------------------------------

    def confirm(self, pending_set: PendingSet, *, timeout: float) -> BatchOutcome:
        """Keys whose bulk add lost its answer: read the sequence once and send only the
        contacts not in it (they never reached Reply)."""
        outcome = BatchOutcome()
        if not pending_set:
            return outcome
        pending = dict(pending_set.items())  # the batches whose answer was lost: a few thousand keys
        self.members(fresh=True)
        named = [identity.get("id") for identity in pending.values() if isinstance(identity, dict)]
        members = self.in_sequence([i for i in named if isinstance(i, int)])
        absent: dict[int, str] = {}
        for key, identity in pending.items():
            contact_id = identity.get("id") if isinstance(identity, dict) else None
            if not isinstance(contact_id, int):
                outcome.failed[key] = (
                    REQUEST_FAILED,
                    "the answer to this contact's bulk add was lost; the next run checks the sequence",
                )
            elif contact_id in members:
                outcome.added[key] = str(contact_id)
            else:
                absent[contact_id] = key
        ids = list(absent)
        for start in range(0, len(ids), self.max_batch_size):
            part = {c: absent[c] for c in ids[start : start + self.max_batch_size]}
            sent = BatchOutcome()
            try:
                self._add(part, frozenset(), sent)
            except SequencesApiError as exc:
                if not exc.is_retryable:
                    raise
                detail = f"the request failed after retries: {exc}"
                sent.failed.update(dict.fromkeys(part.values(), (REQUEST_FAILED, detail)))
            for key in sent.pending:  # lost again: left to the next run
                sent.failed[key] = (
                    REQUEST_FAILED,
                    "the answer to this contact's bulk add was lost twice; the next run checks the sequence",
                )
            sent.pending = {}
            outcome.merge(sent)
        return outcome


def _contact_id(value: Any) -> int | None:
    """A contact id from an answer; ``None`` when missing or not a whole number."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _id_values(contact_ids: list[int]) -> Array:
    """Contact ids as the 64-bit values a :class:`HashIndex` holds (each id is its own hash)."""
    return np.asarray(contact_ids, dtype=np.int64).view(np.uint64)
