"""The Reply.io simulator's records: API keys, sequences, contacts, their links to sequences,
background jobs and bulk adds, and the constants the API uses."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

#: The contact fields the API reads and returns, besides ``customFields``.
CONTACT_FIELDS = (
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
)
SCOPES = frozenset({"contacts:read", "contacts:write", "sequences:read", "sequences:operate"})
SEQUENCE_STATUSES = frozenset({"active", "paused", "new"})
KeyKind = Literal["team", "organization"]


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def email_key(email: str) -> str:
    """Emails match case-insensitively."""
    return email.strip().lower()


#: Observed: the one per-contact refusal the real bulk add gives, whatever the cause.
OBSERVED_REFUSAL = {"error": "invalidInput", "errorDetails": "Contact could not be added to sequence"}
#: Observed: the most items a sequence-contacts page holds, whatever ``top`` asked for.
OBSERVED_MAX_PAGE = 100


@dataclass(frozen=True)
class ApiKey:
    key: str
    owner_user_id: int
    kind: KeyKind
    scopes: frozenset[str]
    members: frozenset[int]
    teams: frozenset[int] = frozenset({1})

    def may_act_for(self, user_id: int) -> bool:
        return user_id == self.owner_user_id or user_id in self.members


@dataclass
class Sequence:
    id: int
    name: str
    status: str
    owner_user_id: int
    step_ids: list[int]
    created: str = field(default_factory=_now_iso)
    is_archived: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "ownerUserId": self.owner_user_id,
            "created": self.created,
            "isArchived": self.is_archived,
        }

    def step_object(self, step_id: int | None) -> dict[str, Any] | None:
        """Observed: a link's ``currentStep`` as ``{stepId, displayName}``."""
        if step_id is None:
            return None
        number = self.step_ids.index(step_id) + 1 if step_id in self.step_ids else 0
        return {"stepId": step_id, "displayName": f"Step {number}"}

    def steps(self) -> list[dict[str, Any]]:
        return [
            {
                "id": step_id,
                "type": "email",
                "number": str(number),
                "delayInMinutes": 0 if number == 1 else 1440,
                "executionMode": "automatic",
                "variants": [],
            }
            for number, step_id in enumerate(self.step_ids, start=1)
        ]


@dataclass
class Contact:
    id: int
    owner_user_id: int
    fields: dict[str, Any]
    custom_fields: list[dict[str, Any]]
    invalid: bool = False
    deleted: bool = False

    @property
    def email(self) -> str:
        return str(self.fields.get("email") or "")

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            **{name: self.fields.get(name) for name in CONTACT_FIELDS},
            "customFields": [dict(custom) for custom in self.custom_fields],
            "ownerUserId": self.owner_user_id,
        }


@dataclass
class Link:
    """A contact's enrolment in one sequence."""

    contact_id: int
    current_step: int | None
    ignore_step_delay: bool
    start_from: str | None
    status: str = "active"
    added_at: str = field(default_factory=_now_iso)


@dataclass
class Job:
    id: str
    owner_user_id: int
    result: dict[str, Any]
    delay: float
    started: float = field(default_factory=time.monotonic)

    def to_api(self, *, observed: bool = False) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        if observed:
            # Reply's documented job: progress 0..1 and the result as a JSON string.
            done = elapsed >= self.delay
            return {
                "jobId": self.id,
                "status": "Done" if done else "Processing",
                "progress": 1.0 if done else round(elapsed / self.delay, 3),
                "jsonDataResult": json.dumps(self.result) if done else None,
            }
        if elapsed >= self.delay:
            return {"jobId": self.id, "status": "Done", "progress": 100, "result": self.result}
        return {"jobId": self.id, "status": "Processing", "progress": int(100 * elapsed / self.delay)}


@dataclass(frozen=True)
class BulkAdd:
    """A validated bulk-add request body."""

    contact_ids: list[int]
    remove_from_existing: bool = False
    start_step_id: int | None = None
    ignore_step_delay: bool = False
    start_from: str | None = None
