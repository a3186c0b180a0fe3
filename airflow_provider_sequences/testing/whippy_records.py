"""The Whippy simulator's records: channels, sequences and steps, contacts, step contacts and
enrolment jobs, as the API shows them."""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
#: A step contact in one of these is "in" its step; any other status means it left the step.
CURRENT_STATUSES = frozenset({"pending", "active"})
CONTACT_FIELDS = (
    "phone",
    "email",
    "name",
    "external_id",
    "language",
    "default_channel_id",
    "address",
    "birth_date",
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    """A new id shaped like Whippy's (a version 4 UUID's text), unique in this process: a
    random prefix and a counter, as ``str(uuid4())`` cost a third of the simulator's
    background work at a million contacts."""
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


_ID_PREFIX = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-"
_id_counter = itertools.count(1)  # next() on it is atomic under the GIL


@dataclass(frozen=True)
class _JobClock:
    """One background job's moments, formatted once: the job is applied all at once."""

    now: datetime
    now_iso: str
    scheduled: datetime
    scheduled_iso: str
    requested_iso: str

    @classmethod
    def of(cls, job: EnrolJob) -> _JobClock:
        now = utc_now()
        scheduled = job.schedule_at or job.requested_at
        return cls(now, iso(now), scheduled, iso(scheduled), iso(job.requested_at))


@dataclass
class Channel:
    id: str
    organization_id: str
    name: str
    type: str
    phone: str | None
    email: str | None

    def to_api(self, *, observed: bool = False) -> dict[str, Any]:
        if observed:
            # What Whippy's own client reads of a channel: no email field (whippy.md, 2026-12).
            return {"id": self.id, "name": self.name, "phone": self.phone, "type": self.type}
        return {"id": self.id, "name": self.name, "phone": self.phone, "email": self.email, "type": self.type}


@dataclass
class Step:
    id: str
    title: str
    channel_type: str
    position: int


@dataclass
class SequenceRecord:
    id: str
    organization_id: str
    title: str
    status: str
    re_add: bool
    steps: list[Step]
    created_at: str

    def to_api(self, *, observed: bool = False) -> dict[str, Any]:
        # Observed: a step's position and channel type are undocumented; answer without them.
        steps = [{"id": s.id, "title": s.title} if observed else vars(s).copy() for s in self.steps]
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "steps": steps,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        }


@dataclass
class CustomObject:
    id: str
    organization_id: str
    key: str
    properties: list[str]


@dataclass
class Contact:
    id: str
    organization_id: str
    phone: str
    created_at: str
    email: str | None = None
    name: str | None = None
    external_id: str | None = None
    language: str | None = None
    default_channel_id: str | None = None
    address: dict[str, Any] | None = None
    birth_date: dict[str, Any] | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    #: custom object key -> properties, for ``custom_data.resource == "contact"``
    custom_data: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self, *, observed: bool = False) -> dict[str, Any]:
        if observed:
            # As Whippy's Activepieces piece receives it: no external_id (whippy.md, 2026-12).
            return {"id": self.id, "name": self.name, "email": self.email, "phone": self.phone}
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "external_id": self.external_id,
        }


@dataclass
class StepContact:
    id: str
    sequence_id: str
    step_id: str
    contact_id: str
    status: str
    scheduled_at: str
    created_at: str
    updated_at: str
    from_: str | None = None
    voice_options: dict[str, Any] | None = None
    #: custom object key -> properties, for ``custom_data.resource == "step_contact"``
    custom_data: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class EnrolJob:
    """One accepted ``POST /v1/sequences/{id}/contacts``, already validated."""

    organization_id: str
    sequence_id: str
    step_id: str
    items: list[dict[str, Any]]
    requested_at: datetime
    schedule_at: datetime | None = None
    from_: str | None = None
    custom_data: dict[str, Any] | None = None
    voice_options: dict[str, Any] | None = None
