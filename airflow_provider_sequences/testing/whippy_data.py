"""The in-memory data of the Whippy simulator (what the service holds, not a sync state) and the
background job that enrols contacts.

The enrolment rules follow Whippy's reference page "Create Sequence Contacts": a contact is
found (by phone, email or external ID) or created; several contacts in one request share an
upload tag; a contact already in the step is reprocessed, one active or pending in another step
is ignored, one that finished the sequence comes back only if the sequence re-adds contacts; a
contact lacking what the step's channel needs is silently ignored.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

from email_validator import EmailNotValidError, validate_email

from airflow_provider_sequences.testing.base import Behaviour
from airflow_provider_sequences.testing.whippy_records import (
    CONTACT_FIELDS,
    CURRENT_STATUSES,
    E164,
    Channel,
    Contact,
    CustomObject,
    EnrolJob,
    SequenceRecord,
    Step,
    StepContact,
    _JobClock,
    iso,
    new_id,
    utc_now,
)

log = logging.getLogger(__name__)


class WhippyData:
    """The simulated Whippy organizations and the Python API tests use to arrange and inspect them.

    Mixed into :class:`~airflow_provider_sequences.testing.whippy.WhippySimulator`; every public
    method takes ``self.lock`` (the HTTP server and the job worker run in other threads).
    """

    lock: threading.RLock
    processing_delay: float
    #: ``observed``: answer as Whippy's own clients report the live service does.
    behaviour: Behaviour

    def _init_data(self) -> None:
        self._keys: dict[str, str] = {}
        self._channels: dict[str, Channel] = {}
        self._sequences: dict[str, SequenceRecord] = {}
        self._custom_objects: dict[str, CustomObject] = {}
        self._contacts: dict[str, Contact] = {}
        # (organization, kind, value) -> contact id, so matching stays O(1) for 4,000-item bodies.
        self._contact_index: dict[tuple[str, str, str], str] = {}
        self._step_contacts: dict[str, list[StepContact]] = {}  # sequence id -> in creation order
        self._by_pair: dict[tuple[str, str], list[StepContact]] = {}  # (sequence, contact)
        self._by_contact: dict[str, list[StepContact]] = {}  # contact id -> in creation order
        # (sequence, step) -> in creation order: paging one step's contacts is O(page).
        self._by_step: dict[tuple[str, str], list[StepContact]] = {}
        # Other filters of the list endpoint, kept up to date as step contacts are created, and
        # dropped (rebuilt on the next read) when a status they filter on changes.
        self._views: dict[tuple[str, frozenset[str], str | None], list[StepContact]] = {}
        self._enrolments: dict[tuple[str, str], int] = {}
        self._upload_tags: list[dict[str, Any]] = []
        self._ignored: list[dict[str, Any]] = []
        # Accepted jobs as (due time on time.monotonic, job); a job leaves the queue once it ran.
        self._jobs: deque[tuple[float, EnrolJob]] = deque()
        self._jobs_changed = threading.Condition()
        self._worker: threading.Thread | None = None
        self.job_errors: list[BaseException] = []

    # -- arranging ----------------------------------------------------------------------------

    def add_api_key(self, key: str, organization_id: str = "org-1") -> None:
        """Accept ``key`` in ``X-WHIPPY-KEY``; it acts for one organization."""
        with self.lock:
            self._keys[key] = organization_id

    def add_channel(
        self,
        *,
        phone: str | None = None,
        email: str | None = None,
        name: str = "Main",
        type: Literal["phone", "email"] = "phone",
        organization_id: str = "org-1",
    ) -> str:
        """Create a channel; its phone or email is a valid ``from``. Returns its id."""
        with self.lock:
            channel = Channel(new_id(), organization_id, name, type, phone, email)
            self._channels[channel.id] = channel
            return channel.id

    def add_sequence(
        self,
        title: str,
        *,
        steps: Sequence[Literal["sms", "email"]] = ("sms",),
        status: Literal["active", "draft"] = "active",
        re_add: bool = False,
        organization_id: str = "org-1",
    ) -> str:
        """Create a sequence with one step per channel kind in ``steps``. Returns its id.

        :param re_add: the sequence setting deciding whether a contact that finished the
            sequence is added again when enrolled again.
        """
        if not steps or any(kind not in ("sms", "email") for kind in steps):
            raise ValueError("steps must be a non-empty list of 'sms' or 'email'")
        with self.lock:
            sequence = SequenceRecord(
                new_id(),
                organization_id,
                title,
                status,
                re_add,
                [Step(new_id(), f"Step {n}", kind, n) for n, kind in enumerate(steps, start=1)],
                iso(utc_now()),
            )
            self._sequences[sequence.id] = sequence
            self._step_contacts[sequence.id] = []
            return sequence.id

    def add_custom_object(self, key: str, properties: list[str], organization_id: str = "org-1") -> str:
        """Create a custom object with these property keys. Returns its id."""
        with self.lock:
            custom_object = CustomObject(new_id(), organization_id, key, list(properties))
            self._custom_objects[custom_object.id] = custom_object
            return custom_object.id

    def add_contact(
        self,
        *,
        phone: str,
        email: str | None = None,
        name: str | None = None,
        external_id: str | None = None,
        organization_id: str = "org-1",
    ) -> str:
        """Create a contact directly (as if it existed before the test). Returns its id."""
        with self.lock:
            item = {"phone": phone, "email": email, "name": name, "external_id": external_id}
            return self._create_contact(organization_id, item, iso(utc_now())).id

    def set_step_contact_status(self, sequence_id: str, contact_id: str, status: str) -> None:
        """Set the status of the contact's latest step contact in the sequence (e.g. ``complete``)."""
        with self.lock:
            records = self._by_pair.get((sequence_id, contact_id))
            if not records:
                raise KeyError(f"contact {contact_id} was never in sequence {sequence_id}")
            records[-1].status = status
            records[-1].updated_at = iso(utc_now())
            self._status_changed(sequence_id)

    # -- inspecting ---------------------------------------------------------------------------

    def sequence(self, sequence_id: str) -> dict[str, Any]:
        """The sequence as the API shows it, with its ``steps`` (ids in order)."""
        with self.lock:
            return self._sequences[sequence_id].to_api()

    @property
    def contacts(self) -> list[dict[str, Any]]:
        """Every contact of every organization, with all stored fields (copies)."""
        with self.lock:
            return [_contact_dict(contact) for contact in self._contacts.values()]

    def contact_by(
        self, *, phone: str | None = None, email: str | None = None, external_id: str | None = None
    ) -> dict[str, Any] | None:
        """The first contact matching every given field, or ``None``."""
        wanted = {"phone": phone, "email": email, "external_id": external_id}
        wanted = {name: value for name, value in wanted.items() if value is not None}
        if not wanted:
            raise ValueError("give at least one of phone, email, external_id")
        with self.lock:
            for contact in self._contacts.values():
                if all(getattr(contact, name) == value for name, value in wanted.items()):
                    return _contact_dict(contact)
            return None

    @property
    def enrolments(self) -> dict[tuple[str, str], int]:
        """(sequence id, contact id) -> how many times a job put the contact into a step.

        A reprocess counts again: that is the harm an incremental sync avoids.
        """
        with self.lock:
            return dict(self._enrolments)

    def step_contacts(self, sequence_id: str) -> list[dict[str, Any]]:
        """The sequence's step contacts in the documented item shape, oldest first: the ground
        truth, with each contact's ``external_id`` whatever the behaviour."""
        with self.lock:
            return [
                self.step_contact_to_api(record, full=True) for record in self._step_contacts[sequence_id]
            ]

    @property
    def upload_tags(self) -> list[dict[str, Any]]:
        """Upload tags: ``{"id", "name", "requested_at", "contact_ids"}``, oldest first."""
        with self.lock:
            return [{**tag, "contact_ids": list(tag["contact_ids"])} for tag in self._upload_tags]

    @property
    def ignored(self) -> list[dict[str, Any]]:
        """Every contact a job silently ignored, with the reason (the API never shows these)."""
        with self.lock:
            return [dict(entry) for entry in self._ignored]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until every accepted background job has run.

        :raises TimeoutError: jobs are still queued after ``timeout`` seconds.
        :raises RuntimeError: a job failed (a simulator bug); the errors are in ``job_errors``.
        """
        with self._jobs_changed:
            if not self._jobs_changed.wait_for(lambda: not self._jobs, timeout):
                raise TimeoutError(f"{len(self._jobs)} Whippy background jobs still queued")
        if self.job_errors:
            raise RuntimeError(f"a Whippy background job failed: {self.job_errors[0]!r}")

    # -- lookups for the API (caller holds self.lock) -----------------------------------------

    def organization_for_key(self, key: str | None) -> str | None:
        with self.lock:
            return self._keys.get(key) if key else None

    def find_sequence(self, organization_id: str, sequence_id: str) -> SequenceRecord | None:
        sequence = self._sequences.get(sequence_id)
        return sequence if sequence and sequence.organization_id == organization_id else None

    def list_sequences(self, organization_id: str) -> list[SequenceRecord]:
        return [seq for seq in self._sequences.values() if seq.organization_id == organization_id]

    def list_channels(self, organization_id: str) -> list[Channel]:
        return [ch for ch in self._channels.values() if ch.organization_id == organization_id]

    def find_custom_object(self, organization_id: str, object_id: str) -> CustomObject | None:
        found = self._custom_objects.get(object_id)
        return found if found and found.organization_id == organization_id else None

    def find_contact(self, organization_id: str, contact_id: str) -> Contact | None:
        contact = self._contacts.get(contact_id)
        return contact if contact and contact.organization_id == organization_id else None

    def sequence_step_contacts(self, sequence_id: str) -> list[StepContact]:
        return list(self._step_contacts.get(sequence_id, []))

    def filtered_step_contacts(
        self, sequence_id: str, step_ids: frozenset[str], status: str | None
    ) -> list[StepContact]:
        """The sequence's step contacts in creation order, only those in ``step_ids`` (all when
        empty) with ``status`` (any when ``None``). The caller holds the lock and must not change
        the list: it is an index, so that a page costs O(page) rather than O(step contacts)."""
        if status is None and len(step_ids) == 1:
            return self._by_step.get((sequence_id, next(iter(step_ids))), [])
        if status is None and not step_ids:
            return self._step_contacts.get(sequence_id, [])
        view = self._views.get((sequence_id, step_ids, status))
        if view is None:
            view = [
                r
                for r in self._step_contacts.get(sequence_id, [])
                if (status is None or r.status == status) and (not step_ids or r.step_id in step_ids)
            ]
            self._views[(sequence_id, step_ids, status)] = view
        return view

    def _status_changed(self, sequence_id: str) -> None:
        """Drop the views filtering this sequence's step contacts by status (caller holds the lock)."""
        for key in [k for k in self._views if k[0] == sequence_id and k[2] is not None]:
            del self._views[key]

    def contact_step_contacts(self, contact_id: str) -> list[StepContact]:
        return list(self._by_contact.get(contact_id, []))

    def step_contact_to_api(self, record: StepContact, *, full: bool = False) -> dict[str, Any]:
        """A step contact as the API shows it (``full``: with the contact's external id, whatever
        the behaviour)."""
        observed = not full and self.behaviour == "observed"
        return {
            "id": record.id,
            "status": record.status,
            "step_id": record.step_id,
            "sequence_id": record.sequence_id,
            "scheduled_at": record.scheduled_at,
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "contact": self._contacts[record.contact_id].summary(observed=observed),
        }

    # -- the background job -------------------------------------------------------------------

    def enqueue(self, job: EnrolJob) -> None:
        """Queue a job to run ``processing_delay`` real seconds from now, after earlier ones."""
        with self._jobs_changed:
            self._jobs.append((time.monotonic() + self.processing_delay, job))
            if self._worker is None:
                # One worker at a time keeps jobs in order; it ends when the queue runs dry.
                self._worker = threading.Thread(target=self._work, name="whippy-jobs", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._jobs_changed:
                if not self._jobs:
                    self._worker = None
                    return
                due, job = self._jobs[0]
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                self.run_job(job)
            except Exception as exc:  # keep the worker alive; wait_idle reports the failure
                log.exception("Whippy simulator background job failed")
                self.job_errors.append(exc)
            with self._jobs_changed:
                self._jobs.popleft()
                self._jobs_changed.notify_all()

    def run_job(self, job: EnrolJob) -> None:
        """Apply one accepted request: match or create contacts, tag them, enrol them."""
        with self.lock:
            sequence = self._sequences[job.sequence_id]
            step = next(step for step in sequence.steps if step.id == job.step_id)
            clock = _JobClock.of(job)
            contacts = [self._match_or_create(job, item, clock) for item in job.items]
            if len(job.items) > 1:
                self._upload_tags.append(
                    {
                        "id": new_id(),
                        "name": f"Upload {clock.requested_iso}",
                        "requested_at": clock.requested_iso,
                        "contact_ids": [contact.id for contact in contacts],
                    }
                )
            for item, contact in zip(job.items, contacts, strict=True):
                self._enrol(job, sequence, step, contact, item, clock)

    def _match_or_create(self, job: EnrolJob, item: dict[str, Any], clock: _JobClock) -> Contact:
        org = job.organization_id
        contact = None
        for kind in ("phone", "email", "external_id"):
            value = item.get(kind)
            if value and (found := self._contact_index.get((org, kind, _key(kind, value)))):
                contact = self._contacts[found]
                break
        if contact is None:
            contact = self._create_contact(org, item, clock.now_iso)
        else:
            # As Whippy's contact upsert does: what the item gives replaces what was stored.
            for name in CONTACT_FIELDS:
                if item.get(name) is not None:
                    setattr(contact, name, item[name])
                    if name in ("phone", "email", "external_id"):
                        self._contact_index[(org, name, _key(name, item[name]))] = contact.id
        properties = item.get("properties") or {}
        if job.custom_data is None:
            contact.properties.update(properties)
        elif job.custom_data["resource"] == "contact":
            key = self._custom_objects[job.custom_data["custom_object_id"]].key
            contact.custom_data.setdefault(key, {}).update(properties)
        return contact

    def _create_contact(self, organization_id: str, item: dict[str, Any], created_at: str) -> Contact:
        contact = Contact(new_id(), organization_id, item["phone"], created_at)
        for name in CONTACT_FIELDS:
            if item.get(name) is not None:
                setattr(contact, name, item[name])
        self._contacts[contact.id] = contact
        for kind in ("phone", "email", "external_id"):
            value = getattr(contact, kind)
            if value:
                self._contact_index.setdefault((organization_id, kind, _key(kind, value)), contact.id)
        return contact

    def _enrol(
        self,
        job: EnrolJob,
        sequence: SequenceRecord,
        step: Step,
        contact: Contact,
        item: dict[str, Any],
        clock: _JobClock,
    ) -> None:
        def ignore(reason: str) -> None:
            self._ignored.append(
                {
                    "sequence_id": sequence.id,
                    "step_id": step.id,
                    "contact_id": contact.id,
                    "phone": contact.phone,
                    "email": contact.email,
                    "reason": reason,
                    "requested_at": clock.requested_iso,
                }
            )

        gap = _channel_gap(step, contact)
        if gap:
            ignore(gap)
            return
        pair = (sequence.id, contact.id)
        records = self._by_pair.setdefault(pair, [])
        current = [record for record in records if record.status in CURRENT_STATUSES]
        same_step = next((record for record in current if record.step_id == step.id), None)
        if current and same_step is None:
            ignore("active or pending in another step of the sequence")
            return
        if records and same_step is None and not sequence.re_add:
            ignore("already went through the sequence, which does not re-add contacts")
            return
        status = "pending" if clock.scheduled > clock.now else "active"
        scheduled_at, now = clock.scheduled_iso, clock.now_iso
        record = same_step or StepContact(
            new_id(), sequence.id, step.id, contact.id, status, scheduled_at, now, now
        )
        # Reprocessing puts the same step contact back to the start of its step.
        if same_step is not None and same_step.status != status:
            self._status_changed(sequence.id)
        record.status, record.scheduled_at, record.updated_at = status, scheduled_at, now
        record.from_, record.voice_options = job.from_, job.voice_options
        if job.custom_data is not None and job.custom_data["resource"] == "step_contact":
            key = self._custom_objects[job.custom_data["custom_object_id"]].key
            record.custom_data[key] = dict(item.get("properties") or {})
        if same_step is None:
            records.append(record)
            self._step_contacts[sequence.id].append(record)
            self._by_contact.setdefault(contact.id, []).append(record)
            self._by_step.setdefault((sequence.id, step.id), []).append(record)
            for (view_sequence, step_ids, view_status), view in self._views.items():
                if (
                    view_sequence == sequence.id
                    and (view_status is None or view_status == record.status)
                    and (not step_ids or record.step_id in step_ids)
                ):
                    view.append(record)
        self._enrolments[pair] = self._enrolments.get(pair, 0) + 1


def _key(kind: str, value: str) -> str:
    # Email addresses match case-insensitively; phones and external IDs exactly.
    return value.lower() if kind == "email" else value


def _channel_gap(step: Step, contact: Contact) -> str | None:
    """Why the contact cannot be reached on the step's channel, or None if it can."""
    if step.channel_type == "email":
        if not contact.email:
            return "email step: the contact has no email"
        try:
            validate_email(contact.email, check_deliverability=False)
        except EmailNotValidError:
            return "email step: the contact's email is invalid"
    elif not E164.match(contact.phone):
        return "sms step: the contact's phone is not in E.164 format"
    return None


def _contact_dict(contact: Contact) -> dict[str, Any]:
    return copy.deepcopy(vars(contact))
