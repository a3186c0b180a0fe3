"""Reply.io request items: the contact fields Reply reads, the field rules, import items from
prepared rows, and how contacts are enrolled."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from airflow_provider_sequences.adapters.base import column_values
from airflow_provider_sequences.sync.contract import FieldRules
from airflow_provider_sequences.sync.outcomes import (
    INVALID_INPUT,
)

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


def reply_rules(*, with_contact_ids: bool, first_name_required: bool = True) -> FieldRules:
    """Reply's fields; rows that carry contact ids need no email. Rows that are imported need
    a ``firstName`` too (Reply's CLI: the import refuses an item without one), unless a
    fallback fills it (``first_name_required=False``)."""
    if with_contact_ids:
        required: frozenset[str] = frozenset()
    elif first_name_required:
        required = frozenset({"email", "firstName"})
    else:
        required = frozenset({"email"})
    return FieldRules(
        known_fields=REPLY_CONTACT_FIELDS,
        prefixes=frozenset({CUSTOM_FIELDS}),
        email_fields=frozenset({"email"}),
        phone_fields=frozenset({"phone"}),
        integer_fields=frozenset(),
        max_length=255,
        required=required,
        service="Reply",
    )


def contact_items(batch: pd.DataFrame, *, first_name_fallback: str | None = None) -> list[dict[str, Any]]:
    """Prepared rows as import items: plain fields, and ``customFields.<name>`` as a list;
    missing values are left out, but a missing ``firstName`` becomes ``first_name_fallback``
    when one is given. Built column by column: this runs for every contact."""
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
    if first_name_fallback:
        for item in items:
            if not item.get("firstName"):
                item["firstName"] = first_name_fallback
    return items


def error_slug(error: Any) -> tuple[str, str]:
    # Reply's client reads {"error": slug, "errorDetails": text}; a bare slug is accepted too.
    if isinstance(error, dict):
        slug = str(error.get("error") or INVALID_INPUT)
        return slug, str(error.get("errorDetails") or "")
    return str(error or INVALID_INPUT), ""


#: Import statuses that give a contact the sync may enrol (Reply's reference writes them
#: capitalised, its CLI reports them lowercase, with ``restored``).
IMPORTED = frozenset({"created", "updated", "restored"})


@dataclass(frozen=True)
class ReplyEnrolment:
    """How contacts are added to the sequence (the bulk add's options), and imported.

    :param first_name_fallback: the ``firstName`` imported for rows without one (Reply
        requires one on every imported contact); ``None``: such rows are ``missingField``.
    """

    remove_from_existing: bool = False
    start_step_id: int | None = None
    ignore_step_delay: bool = False
    start_from: datetime | str | None = None
    overwrite_existing: bool = False
    first_name_fallback: str | None = None
