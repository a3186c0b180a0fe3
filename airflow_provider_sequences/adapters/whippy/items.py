"""What a Whippy write carries: the fields Whippy accepts, the call's options, and the rows of a
batch as the ``to`` items of one create-sequence-contacts call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow_provider_sequences.sync.contract import FieldRules

WHIPPY_PLAIN_FIELDS = frozenset({"phone", "email", "name", "external_id", "language", "default_channel_id"})
NESTED = ("address", "birth_date", "properties")
ADDRESS_PARTS = ("address_line_one", "address_line_two", "city", "state", "country", "post_code")
BIRTH_DATE_PARTS = ("day", "month", "year")


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


@dataclass(frozen=True)
class WhippyEnrolment:
    """How contacts are added (the create-sequence-contacts call's options)."""

    from_channel: str | None = None
    step_id: str | None = None
    schedule_at: datetime | str | None = None
    custom_object_id: str | None = None
    custom_data_resource: str = "contact"
    voice_options: dict[str, Any] | None = None

    def custom_data(self) -> dict[str, Any] | None:
        """The call's ``custom_data``: where ``properties.<key>`` columns go, if anywhere."""
        if not self.custom_object_id:
            return None
        return {"custom_object_id": self.custom_object_id, "resource": self.custom_data_resource}


def to_items(columns: Mapping[str, list[Any]], rows: int) -> list[dict[str, Any]]:
    """Every row as a ``to`` item, with ``address.city`` and the like nested, from the batch's
    columns as :func:`~airflow_provider_sequences.adapters.base.column_values` gives them
    (``None`` where missing); fields in the columns' order."""
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
