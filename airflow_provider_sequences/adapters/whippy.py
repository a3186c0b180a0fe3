"""Whippy adapter: up to 4,000 contacts per call, then read the enrolment back."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import pandas as pd

from airflow_provider_sequences.adapters.base import BatchOutcome, ServiceAdapter, present
from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    SequencesApiError,
    SyncConfigurationError,
)
from airflow_provider_sequences.hooks.whippy import WHIPPY_MAX_CONTACTS_PER_CALL, WhippyHook
from airflow_provider_sequences.sync.outcomes import NOT_ENROLLED
from airflow_provider_sequences.sync.prepare import FieldRules

WHIPPY_PLAIN_FIELDS = frozenset({"phone", "email", "name", "external_id", "language", "default_channel_id"})
NESTED = ("address", "birth_date", "properties")
#: Step contacts in these statuses are in their step; the others left it (or never started it
#: again: a contact that finished the sequence keeps its old, finished step contact).
CURRENT_STATUSES = frozenset({"pending", "active"})
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


def to_item(record: Mapping[str, Any]) -> dict[str, Any]:
    """One prepared row as a ``to`` item, with ``address.city`` and the like nested."""
    item: dict[str, Any] = {}
    for name, value in record.items():
        if not present(value):
            continue
        if name in WHIPPY_PLAIN_FIELDS:
            item[name] = value
            continue
        group, _, part = name.partition(".")
        if group in NESTED and part:
            item.setdefault(group, {})[part] = int(value) if group == "birth_date" else value
    return item


@dataclass(frozen=True)
class WhippyEnrolment:
    """How contacts are added (the create-sequence-contacts call's options)."""

    from_channel: str | None = None
    step_id: str | None = None
    schedule_at: datetime | str | None = None
    custom_object_id: str | None = None
    custom_data_resource: str = "contact"
    voice_options: dict[str, Any] | None = None


class WhippyAdapter(ServiceAdapter):
    """Enrols contacts in a Whippy sequence: one write per 4,000 contacts, then a read-back.

    Whippy answers 202 and works in the background, silently ignoring contacts that lack
    what the step's channel needs or that are active in another step, so an accepted contact
    is only *pending* until :meth:`confirm` sees it in the step.

    :param hook: the Whippy hook.
    :param sequence_id: the sequence to enrol into.
    :param enrolment: the call's options.
    :param poll_interval: seconds between read-backs while waiting for the enrolment.
    """

    service = "whippy"
    max_batch_size: ClassVar[int] = WHIPPY_MAX_CONTACTS_PER_CALL
    resend_is_safe: ClassVar[bool] = False

    def __init__(
        self,
        hook: WhippyHook,
        sequence_id: str,
        *,
        enrolment: WhippyEnrolment | None = None,
        poll_interval: float = 2.0,
    ) -> None:
        self.hook = hook
        self.sequence_id = str(sequence_id)
        self.enrolment = enrolment or WhippyEnrolment()
        self.step_id: str | None = self.enrolment.step_id
        self.step_channel: str | None = None
        self.sequence_title: str | None = None
        self._rules = whippy_rules(email_required=False)
        self._uncertain: set[str] = set()
        self.poll_interval = poll_interval
        #: Seconds already waited elsewhere (a trigger) before :meth:`confirm`, for the details.
        self.waited: float | None = None

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
        steps = sorted(sequence.get("steps") or [], key=lambda s: s.get("position", 0))
        if not steps:
            raise SyncConfigurationError(f"Whippy sequence {self.sequence_id} has no steps")
        by_id = {str(step["id"]): step for step in steps}
        if self.step_id is None:
            self.step_id = str(steps[0]["id"])
        elif self.step_id not in by_id:
            raise SyncConfigurationError(
                f"step_id {self.step_id} is not a step of Whippy sequence {self.sequence_id}; "
                f"its steps are {list(by_id)}"
            )
        self.step_channel = str(by_id[self.step_id].get("channel_type") or "")
        self._rules = whippy_rules(email_required=self.step_channel == "email")
        if self.enrolment.from_channel:
            self._check_channel(self.enrolment.from_channel)
        resource = self.enrolment.custom_data_resource
        if resource not in ("contact", "step_contact"):
            raise SyncConfigurationError(
                f"custom_data_resource must be 'contact' or 'step_contact', not {resource!r}"
            )

    def _check_channel(self, wanted: str) -> None:
        channels: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.hook.list_channels(limit=500, offset=offset)
            channels += page.get("data") or []
            offset += len(page.get("data") or [])
            if not page.get("data") or offset >= int(page.get("total", 0)):
                break
        known = {str(c.get(f)) for c in channels for f in ("phone", "email") if c.get(f)}
        if wanted not in known:
            raise SyncConfigurationError(
                f"from_channel {wanted!r} is not a channel of this Whippy organization; "
                f"its channels are {sorted(known)}"
            )

    def is_row_error(self, error: SequencesApiError) -> bool:
        fields = [e.get("field") or "" for e in error.errors]
        return bool(fields) and all(f.startswith("to[") for f in fields)

    def identity(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: row[name]
            for name in ("phone", "email", "external_id")
            if name in row and present(row[name])
        }

    def push(self, batch: pd.DataFrame, *, resent_keys: frozenset[str] = frozenset()) -> BatchOutcome:
        fields = [c for c in batch.columns if c in WHIPPY_PLAIN_FIELDS or c.split(".", 1)[0] in NESTED]
        records = batch[fields].to_dict("records")
        custom_data = None
        if self.enrolment.custom_object_id:
            custom_data = {
                "custom_object_id": self.enrolment.custom_object_id,
                "resource": self.enrolment.custom_data_resource,
            }
        outcome = BatchOutcome()
        try:
            self.hook.create_sequence_contacts(
                self.sequence_id,
                [to_item(record) for record in records],
                from_=self.enrolment.from_channel,
                step_id=self.step_id,
                schedule_at=self.enrolment.schedule_at,
                custom_data=custom_data,
                voice_options=self.enrolment.voice_options,
            )
        except OutcomeUnknownError:
            # Maybe applied: never re-send blindly (a contact re-sent to its step is messaged
            # again); the read-back will tell.
            self._uncertain.update(batch["key"].tolist())
        for key, record in zip(batch["key"].tolist(), records, strict=True):
            outcome.pending[key] = self.identity(record)
        return outcome

    def enrolled_identities(self) -> tuple[set[str], set[str], set[str]]:
        """External ids, phones and emails of every contact in the target step now.

        Only step contacts that are pending or active count: a contact that went through the
        step before keeps its finished step contact there, and Whippy may ignore it now.
        """
        external_ids: set[str] = set()
        phones: set[str] = set()
        emails: set[str] = set()
        for item in self.hook.iter_sequence_contacts(self.sequence_id, step_ids=[str(self.step_id)]):
            if str(item.get("status") or "").lower() not in CURRENT_STATUSES:
                continue
            contact = item.get("contact") or {}
            if contact.get("external_id"):
                external_ids.add(str(contact["external_id"]))
            if contact.get("phone"):
                phones.add(str(contact["phone"]))
            if contact.get("email"):
                emails.add(str(contact["email"]).lower())
        return external_ids, phones, emails

    def step_total(self) -> int:
        """How many contacts the target step holds (one cheap read)."""
        page = self.hook.list_sequence_contacts(self.sequence_id, limit=1, step_ids=[str(self.step_id)])
        return int(page.get("total", 0))

    def confirm(
        self, pending: Mapping[str, dict[str, Any]], *, timeout: float, poll_interval: float | None = None
    ) -> BatchOutcome:
        """Read the step back until every pending key is seen or ``timeout`` seconds pass.

        Between full read-backs (a request per 500 step contacts) it polls the step's count
        (one request), and reads the step again only when the count moved.
        """
        outcome = BatchOutcome()
        waiting = dict(pending)
        deadline = time.monotonic() + timeout
        interval = self.poll_interval if poll_interval is None else poll_interval
        read_at: int | None = None
        while waiting:
            total = self.step_total()
            if total != read_at:
                read_at = total
                self._match(waiting, outcome)
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
        waited = timeout if self.waited is None else self.waited
        for key in waiting:
            outcome.failed[key] = (NOT_ENROLLED, self._not_enrolled_detail(key, waited))
        return outcome

    def _match(self, waiting: dict[str, dict[str, Any]], outcome: BatchOutcome) -> None:
        """One full read-back: move the keys it finds from ``waiting`` to ``outcome.added``."""
        external_ids, phones, emails = self.enrolled_identities()
        for key, identity in list(waiting.items()):
            external_id = identity.get("external_id")
            seen = (
                str(external_id) in external_ids
                if external_id
                else identity.get("phone") in phones
                or (bool(identity.get("email")) and str(identity.get("email")).lower() in emails)
            )
            if seen:
                outcome.added[key] = None
                del waiting[key]

    def _not_enrolled_detail(self, key: str, timeout: float) -> str:
        step = f"step {self.step_id} of sequence {self.sequence_id}"
        if key in self._uncertain:
            return f"the answer to the request that sent this contact was lost, and it is not in {step}"
        return (
            f"Whippy accepted this contact but it was not in {step} after {timeout:.0f} s: Whippy silently "
            f"ignores contacts that lack what a {self.step_channel or 'step'} step needs, contacts active "
            "in another step of the sequence, and, unless the sequence re-adds contacts, contacts that "
            "already went through it"
        )
