"""The Whippy contract check's one write that changes something, asked for by name: a test
contact (``--test-phone``) enrolled into the sequence's first step and read back."""

from __future__ import annotations

import time
import uuid
from typing import Any

from airflow_provider_sequences.check.base import ServiceCheck
from airflow_provider_sequences.exceptions import OutcomeUnknownError
from airflow_provider_sequences.hooks.whippy import WhippyHook


class WhippyTestContact(ServiceCheck[WhippyHook]):
    """The test contact's checks; :class:`~airflow_provider_sequences.check.whippy.WhippyCheck`
    runs them when it was given a test phone."""

    wait: float
    page: int
    step_contacts: list[dict[str, Any]]

    def check_test_contact(self, sequence_id: str, phone: str) -> None:
        members = self._read_step(sequence_id)
        if members is None:
            return
        found = _find(members, phone, None)
        if found is not None:
            # Whippy reprocesses a contact sent again to its step: it would be messaged again.
            self.report.note("the test contact was already in the sequence: it was not sent again")
            self._report_found(found, phone, None, 0.0)
            return
        external_id = f"contract-check-{uuid.uuid4().hex[:12]}"
        call = self.call(
            "POST /v1/sequences/{id}/contacts",
            self.hook.create_sequence_contacts,
            sequence_id,
            [{"phone": phone, "external_id": external_id}],
        )
        if isinstance(call.error, OutcomeUnknownError):
            self.report.note("the test contact's answer was lost; reading back whether it arrived")
        elif not call.ok:
            self.report.violated("create.accepted", f"enrolling the test contact {call.describe()}")
            return
        else:
            self.report.judge(
                "create.accepted",
                call.status == 202,
                "enrolling a contact is accepted with 202 (the work runs in the background)",
                f"enrolling a contact {call.describe()}, not 202",
            )
        started = time.monotonic()
        while True:
            members = self._read_step(sequence_id)
            if members is None:
                return
            found = _find(members, phone, external_id)
            waited = time.monotonic() - started
            if found is not None:
                self._report_found(found, phone, external_id, waited)
                return
            if waited >= self.wait:
                self.report.violated(
                    "write.readBack",
                    f"the test contact was not in the sequence after {waited:.0f} s: "
                    "Whippy may have ignored it (a contact lacking what the step's channel needs is "
                    "ignored silently)",
                )
                return
            time.sleep(min(2.0, max(self.wait - waited, 0.1)))

    def _report_found(self, item: dict[str, Any], phone: str, external_id: str | None, waited: float) -> None:
        self.step_contacts.append(item)
        contact = item.get("contact") or {}
        by = []
        if contact.get("phone") == phone:
            by.append("phone (E.164)")
        if external_id is not None and contact.get("external_id") == external_id:
            by.append("external_id")
        self.report.judge(
            "write.readBack",
            bool(by),
            f"the test contact was in the sequence after {waited:.0f} s, recognisable by {' and '.join(by)}",
            "the test contact was found but matches neither the phone nor the external_id sent",
        )

    def _read_step(self, sequence_id: str) -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            call = self.call(
                "GET /v1/sequences/{id}/contacts (read back)",
                self.hook.list_sequence_contacts,
                sequence_id,
                limit=self.page,
                offset=offset,
            )
            if not call.ok or not isinstance(call.result, dict):
                self.report.violated("write.readBack", f"reading the sequence back {call.describe()}")
                return None
            page = [i for i in call.result.get("data") or [] if isinstance(i, dict)]
            items += page
            offset += len(page)
            total = call.result.get("total")
            # Without a total, a short page is the end.
            if not page or (offset >= total if isinstance(total, int) else len(page) < self.page):
                return items


def _find(items: list[dict[str, Any]], phone: str, external_id: str | None) -> dict[str, Any] | None:
    for item in items:
        contact = item.get("contact")
        if not isinstance(contact, dict):
            continue
        if contact.get("phone") == phone or (
            external_id is not None and contact.get("external_id") == external_id
        ):
            return item
    return None
