"""Who is in the sequence before the sync's first write: Whippy would message again a contact
sent to the step it is in, so members are never sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from airflow_provider_sequences.adapters.base import column_values
from airflow_provider_sequences.adapters.whippy.steps import CURRENT_STATUSES
from airflow_provider_sequences.sync.contract import BatchOutcome
from airflow_provider_sequences.sync.outcomes import CONTACT_ALREADY_IN_SEQUENCE

#: How a contact stands in the sequence, from a read of its members: the step contact that
#: counts (a current one before a finished one) as (step id, status).
_Standing = tuple[str, str]


class Members:
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


def without_members(
    batch: pd.DataFrame,
    outcome: BatchOutcome,
    members: Members | None,
    *,
    sequence_id: str,
    step_id: str | None,
) -> pd.DataFrame:
    """The batch without the rows Whippy would match to a member of the sequence; those are
    ``added`` (current in the target step) or ``contactAlreadyInSequence`` in ``outcome``."""
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
        if step == step_id and status in CURRENT_STATUSES:
            outcome.added[key] = None
        elif status in CURRENT_STATUSES:
            outcome.failed[key] = (
                CONTACT_ALREADY_IN_SEQUENCE,
                f"already {status} in step {step} of Whippy sequence {sequence_id} before this "
                "sync first ran: not sent (Whippy ignores a contact active in another step)",
            )
        else:
            outcome.failed[key] = (
                CONTACT_ALREADY_IN_SEQUENCE,
                f"went through Whippy sequence {sequence_id} before this sync first ran (step "
                f"{step}, {status or 'no status'}): not sent, so that nobody gets the sequence twice",
            )
    return batch if all(keep) else batch[keep]
