"""Reply.io adapter: import contacts in bulk to get their ids, then bulk-add them to a sequence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import pandas as pd

from airflow_provider_sequences.adapters.base import BatchOutcome, ServiceAdapter, column_values
from airflow_provider_sequences.exceptions import SequencesApiError, SyncConfigurationError
from airflow_provider_sequences.hooks.base import describe_shape
from airflow_provider_sequences.hooks.reply import REPLY_MAX_BULK_IDS, ReplyHook, reply_sequence_id
from airflow_provider_sequences.sync.outcomes import (
    CONTACT_ALREADY_IN_SEQUENCE,
    INVALID_INPUT,
    REQUEST_FAILED,
)
from airflow_provider_sequences.sync.prepare import FieldRules

REPLY_CONTACT_FIELDS = frozenset(
    {
        "email",
        "firstName",
        "lastName",
        "phone",
        "title",
        "company",
        "city",
        "state",
        "country",
        "timeZoneId",
        "linkedInUrl",
        "notes",
    }
)
CUSTOM_FIELDS = "customFields"


def reply_rules(*, with_contact_ids: bool) -> FieldRules:
    """Reply's fields; rows that carry contact ids need no email."""
    return FieldRules(
        known_fields=REPLY_CONTACT_FIELDS,
        prefixes=frozenset({CUSTOM_FIELDS}),
        email_fields=frozenset({"email"}),
        phone_fields=frozenset({"phone"}),
        integer_fields=frozenset(),
        max_length=255,
        required=frozenset() if with_contact_ids else frozenset({"email"}),
        service="Reply",
    )


def contact_items(batch: pd.DataFrame) -> list[dict[str, Any]]:
    """Prepared rows as import items: plain fields, and ``customFields.<name>`` as a list;
    missing values are left out. Built column by column: this runs for every contact."""
    plain = [c for c in batch.columns if c in REPLY_CONTACT_FIELDS]
    custom = [c for c in batch.columns if c.startswith(CUSTOM_FIELDS + ".")]
    items: list[dict[str, Any]]
    if plain:
        # Most rows have every field: ``dict(zip(...))`` builds them in C; only rows with a
        # gap pay for a filtered build.
        items = [
            dict(zip(plain, row, strict=True))
            if None not in row
            else {name: value for name, value in zip(plain, row, strict=True) if value is not None}
            for row in zip(*(column_values(batch[c]) for c in plain), strict=True)
        ]
    else:
        items = [{} for _ in range(len(batch))]
    for column in custom:
        name = column[len(CUSTOM_FIELDS) + 1 :]
        for item, value in zip(items, column_values(batch[column]), strict=True):
            if value is not None:
                # Column by column keeps each item's custom fields in column order.
                item.setdefault(CUSTOM_FIELDS, []).append({"name": name, "value": value})
    return items


def _error_slug(error: Any) -> tuple[str, str]:
    # Reply's client reads {"error": slug, "errorDetails": text}; a bare slug is accepted too.
    if isinstance(error, dict):
        slug = str(error.get("error") or INVALID_INPUT)
        return slug, str(error.get("errorDetails") or "")
    return str(error or INVALID_INPUT), ""


@dataclass(frozen=True)
class ReplyEnrolment:
    """How contacts are added to the sequence (the bulk add's options)."""

    remove_from_existing: bool = False
    start_step_id: int | None = None
    ignore_step_delay: bool = False
    start_from: datetime | str | None = None
    overwrite_existing: bool = False


class ReplyAdapter(ServiceAdapter):
    """Enrols contacts in a Reply.io sequence with two requests per batch at most.

    Rows that carry Reply contact ids go straight to the bulk add (one request per 1,000).
    Rows that carry emails are first imported in bulk (an upsert matched by email) to get
    their ids, then bulk-added: two requests per 1,000, never one per contact.

    :param hook: the Reply hook.
    :param sequence_id: the sequence to enrol into.
    :param enrolment: the bulk add's options.
    :param with_contact_ids: whether batches carry an ``id`` column of contact ids.
    """

    service = "reply"
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
        self._rules = reply_rules(with_contact_ids=with_contact_ids)
        self.sequence_name: str | None = None

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
        steps = [int(step["id"]) for step in sequence.get("steps") or [] if "id" in step]
        start_step = self.enrolment.start_step_id
        if start_step is not None and steps and int(start_step) not in steps:
            raise SyncConfigurationError(
                f"start_step_id {start_step} is not a step of Reply sequence {self.sequence_id} "
                f"({self.sequence_name!r}); its steps are {steps}"
            )

    def is_row_error(self, error: SequencesApiError) -> bool:
        # Errors pinned to one item or id are about rows; others (startStepId, startFrom) are
        # about the request and would fail every batch.
        fields = [e.get("field") or "" for e in error.errors]
        return bool(fields) and all(f.startswith(("items[", "contactIds[")) for f in fields)

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
        if not key_by_id:
            return outcome
        uncertain_before = self.hook.uncertain_retries
        answer = self.hook.add_contacts_to_sequence(
            self.sequence_id,
            list(key_by_id),
            remove_from_existing=self.enrolment.remove_from_existing,
            start_step_id=self.enrolment.start_step_id,
            ignore_step_delay=self.enrolment.ignore_step_delay,
            start_from=self.enrolment.start_from,
        )
        # After a lost answer was retried, "already in the sequence" means this run added it.
        retried = self.hook.uncertain_retries > uncertain_before
        try:
            self._read_added(answer, key_by_id, resent_keys, retried, outcome)
        except (TypeError, ValueError, AttributeError):
            # Ids that are not numbers, errors that are not objects: not an answer to act on.
            raise self.hook.unexpected(
                "POST",
                f"/v3/sequences/{self.sequence_id}/contact-links/bulk",
                200,
                f"an answer of unexpected shape: {describe_shape(answer)}",
            ) from None
        # Ids Reply answered nothing about are not silently dropped, nor judged: the answer was
        # not what Reply documents, so a later run sends them again.
        answered = set(outcome.added) | set(outcome.failed)
        for contact_id, key in key_by_id.items():
            if key not in answered:
                outcome.failed[key] = (REQUEST_FAILED, f"Reply's answer did not mention contact {contact_id}")
        # ... and share the outcome of the first of them.
        for key, contact_id in same_contact.items():
            first = key_by_id[contact_id]
            if first in outcome.added:
                outcome.added[key] = str(contact_id)
            else:
                outcome.failed[key] = outcome.failed[first]
        return outcome

    @staticmethod
    def _read_added(
        answer: dict[str, Any],
        key_by_id: dict[int, str],
        resent_keys: frozenset[str],
        retried: bool,
        outcome: BatchOutcome,
    ) -> None:
        """The bulk add's answer into ``outcome``, by key."""
        for contact_id in answer.get("added") or []:
            key = key_by_id.get(int(contact_id))
            if key is not None:
                outcome.added[key] = str(contact_id)
        for raw_id, error in (answer.get("notProcessed") or {}).items():
            key = key_by_id.get(int(raw_id))
            if key is None:
                continue
            slug, detail = _error_slug(error)
            if slug == CONTACT_ALREADY_IN_SEQUENCE and (retried or key in resent_keys):
                outcome.added[key] = str(raw_id)
                continue
            outcome.failed[key] = (slug, detail or f"Reply did not add contact {raw_id}: {slug}")

    def _import(self, batch: pd.DataFrame, outcome: BatchOutcome) -> list[int | None]:
        items = contact_items(batch)
        answer = self.hook.import_contacts(items, overwrite_existing=self.enrolment.overwrite_existing)
        results = answer.get("items") or []
        if not all(isinstance(result, dict) for result in results):
            raise self.hook.unexpected(
                "POST", "/v3/contacts/import", 200, f"an answer of unexpected shape: {describe_shape(answer)}"
            )
        ids: list[int | None] = []
        for index, key in enumerate(batch["key"].tolist()):
            result = results[index] if index < len(results) else {}
            contact_id = _contact_id(result.get("id"))
            if contact_id is not None and result.get("status") != "Failed":
                ids.append(contact_id)
                continue
            ids.append(None)
            error = result.get("error")
            if error or result.get("status") == "Failed":
                outcome.failed[key] = (INVALID_INPUT, f"Reply could not import this contact: {error}")
            else:
                # No verdict, just a gap in the answer: a later run sends the contact again.
                outcome.failed[key] = (
                    REQUEST_FAILED,
                    "Reply's import answer gave no contact id for this row",
                )
        return ids


def _contact_id(value: Any) -> int | None:
    """A contact id from an answer; ``None`` when missing or not a whole number."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
