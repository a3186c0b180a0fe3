"""The Reply.io contract check's one write that changes something, asked for by name: a test
contact imported, enrolled into the sequence and read back (``--test-email``)."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_sequences.check.base import Call, ServiceCheck, first_missing
from airflow_provider_sequences.hooks.reply import ReplyHook

#: The import statuses Reply documents for each item.
DOCUMENTED_IMPORT_STATUSES = {"Created", "Updated", "Skipped", "Failed"}
#: The first name sent with the test contact when Reply requires one.
TEST_FIRST_NAME = "Test"


class ReplyTestContact(ServiceCheck[ReplyHook]):
    """The test contact's checks; :class:`~airflow_provider_sequences.check.reply.ReplyCheck`
    runs them when it was given a test email."""

    contacts_page: int
    members: list[dict[str, Any]]
    skip_reason: str | None

    def check_test_contact(self, sequence_id: int, email: str) -> None:
        contact_id = self._import_test_contact(email)
        if contact_id is None and self.skip_reason is not None:
            # Its id names a contact the acting user does not own (or deleted): never enrol it.
            self.report.not_seen(
                "write.readBack",
                f"Reply skipped the test contact (skipReason {self.skip_reason}): it was not enrolled; "
                "name a contact of the acting user",
            )
            return
        if contact_id is None:
            self.report.violated("write.readBack", "the test contact was not imported, so not enrolled")
            return
        members = self._members(sequence_id)
        if members is None:
            return
        was_member = contact_id in members
        if was_member:
            self.report.note("the test contact was already in the sequence: it was not added again")
        else:
            call = self.call(
                "POST /v3/sequences/{id}/contact-links/bulk",
                self.hook.add_contacts_to_sequence,
                sequence_id,
                [contact_id],
            )
            if not call.ok:
                self.report.violated("bulkAdd.answer", f"adding the test contact {call.describe()}")
                return
            self._judge_bulk_answer(call.result, {contact_id})
        self._judge_re_add(sequence_id, contact_id)
        members = self._members(sequence_id)
        if members is None:
            return
        if contact_id in members:
            item = members[contact_id]
            self.members.append(item)
            by = ["contactId"] + (["email"] if isinstance(item.get("email"), str) else [])
            self.report.held(
                "write.readBack",
                f"the test contact is in the sequence, recognisable by {' and '.join(by)}",
            )
        else:
            self.report.violated("write.readBack", "the test contact is not among the sequence's members")

    def _import_test_contact(self, email: str) -> int | None:
        call = self.call(
            "POST /v3/contacts/import (one item, no firstName)",
            self.hook.import_contacts,
            [{"email": email}],
        )
        self._judge_background_job(call)
        item = _first_item(_import_result(call))
        status = item.get("status") if item else None
        accepted = call.ok and item is not None and isinstance(item.get("id"), int) and _status_ok(status)
        if call.ok and item is not None:
            self._judge_import_item(item)
            if self._skipped(item):
                return None
        if accepted:
            self.report.held("import.firstNameOptional", "an item without firstName was imported")
            assert item is not None
            return int(item["id"])
        self.report.violated(
            "import.firstNameOptional",
            f"an item without firstName was refused ({call.describe()}"
            + (f", item status {status}" if isinstance(status, str) else "")
            + "): every row needs a first name",
        )
        call = self.call(
            "POST /v3/contacts/import (one item)",
            self.hook.import_contacts,
            [{"email": email, "firstName": TEST_FIRST_NAME}],
        )
        self._judge_background_job(call)
        item = _first_item(_import_result(call))
        if call.ok and item is not None:
            self._judge_import_item(item)
            if not self._skipped(item) and isinstance(item.get("id"), int) and _status_ok(item.get("status")):
                return int(item["id"])
        return None

    def _skipped(self, item: dict[str, Any]) -> bool:
        """A skipped item: remember why (the sync never enrols the contact it names)."""
        status = item.get("status")
        if not (isinstance(status, str) and status.lower() == "skipped"):
            return False
        reason = item.get("skipReason")
        self.skip_reason = reason if isinstance(reason, str) and reason.isidentifier() else "not given"
        return True

    def _judge_import_item(self, item: dict[str, Any]) -> None:
        if self.report.verdict("import.items") is not None:
            return
        status = item.get("status")
        wrong = first_missing([item], {"id": (int, type(None)), "status": (str,)})
        self.report.judge(
            "import.items",
            not wrong,
            "import items carry id and status",
            f"import items lack (or mistype) {', '.join(wrong)}",
        )
        if isinstance(status, str):
            self.report.judge(
                "import.statuses",
                status in DOCUMENTED_IMPORT_STATUSES,
                "import item statuses are capitalised (Created, Updated, Skipped, Failed)",
                f"an import item's status is {status!r}, not one of Created, Updated, Skipped, Failed",
            )
        if "skipReason" in item:
            self.report.note("import items carry skipReason")

    def _judge_background_job(self, call: Call) -> None:
        done = [
            e.body
            for e in call.exchanges
            if isinstance(e.body, dict) and "jobId" in e.body and e.body.get("status") == "Done"
        ]
        if not done:
            return
        job = done[-1]
        self.report.judge(
            "import.backgroundJob",
            isinstance(job.get("result"), dict),
            "a background import's finished job carries its result as an object",
            "a background import's finished job carries no result object"
            + (" (but jsonDataResult, a JSON string)" if isinstance(job.get("jsonDataResult"), str) else ""),
        )

    def _judge_bulk_answer(self, answer: Any, ids: set[int]) -> None:
        ok = (
            isinstance(answer, dict)
            and isinstance(answer.get("added"), list)
            and isinstance(answer.get("notProcessed"), dict)
        )
        mentioned = set()
        if ok:
            mentioned = {i for i in answer["added"] if isinstance(i, int)}
            mentioned |= {int(k) for k in answer["notProcessed"] if str(k).isdigit()}
        ok = ok and ids <= mentioned
        self.report.judge(
            "bulkAdd.answer",
            ok,
            "a bulk add answers {added: [ids], notProcessed: {id: ...}} and names every contact",
            "a bulk add's answer is not {added: [...], notProcessed: {...}} naming every contact",
        )

    def _judge_re_add(self, sequence_id: int, contact_id: int) -> None:
        call = self.call(
            "POST /v3/sequences/{id}/contact-links/bulk (a member again)",
            self.hook.add_contacts_to_sequence,
            sequence_id,
            [contact_id],
        )
        if not call.ok or not isinstance(call.result, dict):
            self.report.violated(
                "bulkAdd.alreadyInSequence",
                f"adding a member again {call.describe()}, not a per-contact answer",
            )
            return
        not_processed = call.result.get("notProcessed")
        refused = not_processed.get(str(contact_id)) if isinstance(not_processed, dict) else None
        added = call.result.get("added")
        if refused is None and isinstance(added, list) and contact_id in added:
            self.report.violated(
                "bulkAdd.alreadyInSequence", "a member added again is answered added: Reply enrolled it again"
            )
            return
        slug = refused.get("error") if isinstance(refused, dict) else refused
        shape = "{error, errorDetails}" if isinstance(refused, dict) else "a bare slug"
        self.report.judge(
            "bulkAdd.alreadyInSequence",
            slug == "contactAlreadyInSequence",
            f"a member added again is refused as contactAlreadyInSequence ({shape})",
            f"a member added again is refused as {slug!r}, not contactAlreadyInSequence ({shape}): "
            "after a lost answer, only reading the sequence tells who is in it",
        )

    def _members(self, sequence_id: int) -> dict[int, dict[str, Any]] | None:
        members: dict[int, dict[str, Any]] = {}
        skip = 0
        while True:
            call = self.call(
                "GET /v3/sequences/{id}/contacts (read back)",
                self.hook.list_sequence_contacts,
                sequence_id,
                top=self.contacts_page,
                skip=skip,
            )
            if not call.ok or not isinstance(call.result, dict):
                self.report.violated("write.readBack", f"reading the sequence back {call.describe()}")
                return None
            items = [i for i in call.result.get("items") or [] if isinstance(i, dict)]
            members.update({i["contactId"]: i for i in items if isinstance(i.get("contactId"), int)})
            if not call.result.get("hasMore") or not items:
                return members
            skip += len(items)


def _import_result(call: Call) -> Any:
    """The import's answer; from a finished job's ``jsonDataResult`` when the hook found no
    ``result`` there, so the check can go on to the enrolment."""
    if _first_item(call.result) is not None or not call.ok:
        return call.result
    for exchange in reversed(call.exchanges):
        text = exchange.body.get("jsonDataResult") if isinstance(exchange.body, dict) else None
        if isinstance(text, str):
            try:
                return json.loads(text)
            except ValueError:
                return call.result
    return call.result


def _first_item(answer: Any) -> dict[str, Any] | None:
    items = answer.get("items") if isinstance(answer, dict) else None
    first = items[0] if isinstance(items, list) and items else None
    return first if isinstance(first, dict) else None


def _status_ok(status: Any) -> bool:
    return isinstance(status, str) and status.lower() in {"created", "updated", "restored"}
