"""The Whippy contract check: what the sync assumes of ``/v1``, asked of the real service.

Read-only unless a test contact is named. The only write it sends by default is one Whippy
must refuse, a contact without a phone, to see whether a refusal names the contact it is
about; it costs one of the ten sequence writes a minute.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from airflow_provider_sequences.check.base import Call, CheckAborted, first_missing, objects
from airflow_provider_sequences.check.report import Report, Verdict
from airflow_provider_sequences.check.whippy_contact import WhippyTestContact
from airflow_provider_sequences.hooks.whippy import WhippyHook

#: The largest page documented (for another list); a Whippy-written client says 1 to 100.
DOCUMENTED_MAX_PAGE = 500
FALLBACK_PAGE = 100
#: What the step-contact page size means for the connection's ``page_size`` extra.
PAGE_ADVICE = {
    True: f"the connection extra page_size={DOCUMENTED_MAX_PAGE} reads a step in fewer requests",
    False: f"keep the connection extra page_size at {FALLBACK_PAGE} (the default)",
}
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
RATE_LIMIT_HEADER = "X-RateLimit-Remaining-Interval-Milliseconds"


class WhippyCheck(WhippyTestContact):
    """Every assumption the sync makes of Whippy, judged from Whippy's answers.

    :param sequence_id: the sequence to read (and, with ``test_phone``, to write to); when
        ``None``, the first sequence listed is read.
    :param test_phone: an E.164 phone to enrol into ``sequence_id`` and read back.
    :param wait: seconds to wait for Whippy's background work to show the test contact.
    """

    service = "whippy"

    def __init__(
        self,
        hook: WhippyHook,
        report: Report,
        *,
        sequence_id: str | None = None,
        test_phone: str | None = None,
        probes: bool = True,
        wait: float = 120.0,
    ) -> None:
        super().__init__(hook, report, probes=probes)
        self.sequence_id = sequence_id
        self.test_phone = test_phone
        self.wait = wait
        #: The step-contact page size that works (judged before any read-back).
        self.page = FALLBACK_PAGE
        self.step_contacts: list[dict[str, Any]] = []

    def run(self) -> None:
        self.check_channels()
        self.check_wrong_key()
        self.check_sequences()
        if self.sequence_id is not None:
            self.check_sequence()
            self.check_step_contacts()
        self.check_missing_sequence()
        if self.probes and self.sequence_id is not None:
            self.check_refusal_names_item()
        elif self.probes:
            self.report.not_seen("errors.itemNamed", "no sequence to probe a refused contact on")
        if self.test_phone is not None and self.sequence_id is not None:
            if self.report.verdict("sequence.ready") is Verdict.VIOLATED:
                self.report.note("the test contact was not sent: the sequence cannot take contacts")
            else:
                self.check_test_contact(self.sequence_id, self.test_phone)
        self.judge_step_contacts()
        self.check_error_shapes()
        self.judge_rate_limit_header(RATE_LIMIT_HEADER, "milliseconds to wait")

    # -- lists -------------------------------------------------------------------------------

    def _judge_page(self, id: str, label: str, fn: Any, *args: Any, **kwargs: Any) -> tuple[Call, int]:
        """Ask for a page of ``limit=500``; when refused, of 100. Judges the page size and the
        list's shape (``data`` and ``total``)."""
        limit = DOCUMENTED_MAX_PAGE
        call = self.call(f"{label}?limit={limit}", fn, *args, limit=limit, **kwargs)
        if call.status in (400, 422):
            fallback = self.call(f"{label}?limit={FALLBACK_PAGE}", fn, *args, limit=FALLBACK_PAGE, **kwargs)
            works = f"; limit={FALLBACK_PAGE} works" if fallback.ok else ""
            advice = PAGE_ADVICE[False] if id == "stepContacts" else f"page at {FALLBACK_PAGE}"
            self.report.violated(
                f"pageSize.{id}",
                f"limit={limit} (the documented maximum) {call.describe()}{works}: {advice}",
            )
            call, limit = fallback, FALLBACK_PAGE
        if not call.ok:
            return call, limit
        body = call.result
        ok = isinstance(body, dict) and isinstance(body.get("data"), list)
        total = ok and isinstance(body.get("total"), int) and not isinstance(body.get("total"), bool)
        served = len(body["data"]) if ok else 0
        if limit == DOCUMENTED_MAX_PAGE and total and served < min(limit, body["total"]):
            self.report.violated(
                f"pageSize.{id}",
                f"limit={limit} answers pages of {served} items of {body['total']}: pages are capped "
                "silently, so only total (never a short page) says the list ended",
            )
        elif limit == DOCUMENTED_MAX_PAGE:
            more = (
                ""
                if total and body["total"] > served
                else " (the list fits one page: a lower cap would not show)"
            )
            advice = f"; {PAGE_ADVICE[True]}" if id == "stepContacts" else ""
            self.report.held(f"pageSize.{id}", f"limit={limit} is accepted{more}{advice}")
        self.report.judge(
            f"paging.{id}",
            total,
            "answers {data: [...], total: integer}",
            "answers without an integer total: only a page shorter than the limit says the list ended"
            if ok
            else "the answer is not {data: [...], total}",
        )
        return call, limit

    def check_channels(self) -> None:
        # The Test button's call proves the key first; the page size is judged by the next one.
        self.first_call("GET /v1/channels?limit=1", self.hook.list_channels, limit=1)
        call, _ = self._judge_page("channels", "GET /v1/channels", self.hook.list_channels)
        if not call.ok:
            self.report.violated("channels.fields", f"GET /v1/channels {call.describe()}")
            return
        channels = objects(call.result, "data")
        if not channels:
            self.report.not_seen("channels.fields", "the organization has no channel")
            return
        wrong = first_missing(channels, {"id": (str, int), "phone": (str, type(None)), "type": (str,)})
        self.report.judge(
            "channels.fields",
            not wrong,
            "channels carry id, phone and type",
            f"channels lack (or mistype) {', '.join(wrong)}",
        )
        self.report.judge(
            "channels.email",
            all("email" in c for c in channels),
            "channels carry email: an email from is checked against them",
            "channels carry no email field: a from that is an email address cannot be checked",
        )

    def check_wrong_key(self) -> None:
        wrong = self.wrong_key_hook()
        call = self.call("GET /v1/channels (wrong key)", wrong.list_channels, limit=1)
        self.report.judge(
            "auth.wrongKey",
            call.status == 401,
            "a wrong key is refused with 401",
            f"a wrong key {call.describe()}, not 401: the sync would not stop on a revoked key",
        )

    def check_sequences(self) -> None:
        call, _ = self._judge_page("sequences", "GET /v1/sequences", self.hook.list_sequences)
        if not call.ok:
            self.report.violated("sequences.fields", f"GET /v1/sequences {call.describe()}")
            return
        items = objects(call.result, "data")
        if not items:
            self.report.not_seen("sequences.fields", "the organization has no sequence")
            return
        wrong = first_missing(items, {"id": (str,), "title": (str,), "status": (str,)})
        self.report.judge(
            "sequences.fields",
            not wrong,
            "sequences carry id, title and status",
            f"sequences lack (or mistype) {', '.join(wrong)}",
        )
        if self.sequence_id is None:
            usable = [s["id"] for s in items if isinstance(s.get("id"), str) and s.get("status") != "draft"]
            if usable:
                self.sequence_id = usable[0]
                self.report.note(
                    f"read sequence {self.sequence_id}, the first listed (--sequence-id to choose)"
                )

    # -- the sequence ------------------------------------------------------------------------

    def check_sequence(self) -> None:
        assert self.sequence_id is not None
        call = self.call("GET /v1/sequences/{id}", self.hook.get_sequence, self.sequence_id)
        if call.error is not None and call.error.status == 404:
            raise CheckAborted(f"Whippy sequence {self.sequence_id} does not exist in this organization")
        if not call.ok or not isinstance(call.result, dict):
            self.report.violated("sequence.details", f"GET /v1/sequences/{{id}} {call.describe()}")
            return
        sequence = call.result
        steps = sequence.get("steps")
        step_list = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
        wrong = [] if isinstance(steps, list) else ["steps"]
        if not isinstance(sequence.get("status"), str):
            wrong.append("status")
        wrong += [
            f"steps[].{name}"
            for name in first_missing(step_list, {"id": (str,), "position": (int,), "channel_type": (str,)})
        ]
        consequences = []
        if "steps[].position" in wrong:
            consequences.append("the first step is the first listed")
        if "steps[].channel_type" in wrong:
            consequences.append("an email step cannot be told from an SMS step")
        self.report.judge(
            "sequence.details",
            not wrong,
            "the sequence carries status and steps with id, position and channel_type",
            f"the sequence lacks (or mistypes) {', '.join(wrong)}"
            + (f": {'; '.join(consequences)}" if consequences else ""),
        )
        if sequence.get("status") == "draft":
            self.report.violated("sequence.ready", "the sequence is a draft: it accepts no contacts")
        elif isinstance(steps, list) and not step_list:
            self.report.violated("sequence.ready", "the sequence has no steps")
        elif isinstance(steps, list):
            self.report.held("sequence.ready", "the sequence is not a draft and has steps")
        else:
            self.report.not_seen("sequence.ready", "the sequence's details list no steps")

    def check_step_contacts(self) -> None:
        assert self.sequence_id is not None
        call, limit = self._judge_page(
            "stepContacts",
            "GET /v1/sequences/{id}/contacts",
            self.hook.list_sequence_contacts,
            self.sequence_id,
        )
        if call.ok:
            self.page = limit
            self.step_contacts += objects(call.result, "data")

    def judge_step_contacts(self) -> None:
        items = self.step_contacts
        ids = (
            "stepContacts.fields",
            "stepContacts.externalId",
            "stepContacts.phoneE164",
            "stepContacts.email",
        )
        if not items:
            for id in ids:
                self.report.not_seen(id, "no step contact seen (--write-test-contact enrols one to see them)")
            return
        wrong = first_missing(items, {"status": (str,), "step_id": (str,), "contact": (dict,)})
        contacts = [i["contact"] for i in items if isinstance(i.get("contact"), dict)]
        wrong += [f"contact.{name}" for name in first_missing(contacts, {"id": (str, int), "phone": (str,)})]
        self.report.judge(
            ids[0],
            not wrong,
            "step contacts carry status, step_id and contact {id, phone}",
            f"step contacts lack (or mistype) {', '.join(wrong)}",
        )
        self.report.judge(
            ids[1],
            all("external_id" in c for c in contacts),
            "a step contact's contact carries external_id",
            "a step contact's contact carries no external_id: "
            "the read-back recognises contacts by E.164 phone and lowercase email",
        )
        phones = [c.get("phone") for c in contacts if c.get("phone") is not None]
        bad = [p for p in phones if not (isinstance(p, str) and E164.match(p))]
        self.report.judge(
            ids[2],
            not bad,
            f"{len(phones)} phone(s) read back in E.164",
            f"{len(bad)} of {len(phones)} phone(s) read back are not E.164: a read-back by phone misses them",
        )
        self.report.judge(
            ids[3],
            all("email" in c for c in contacts),
            "a step contact's contact carries email",
            "a step contact's contact carries no email field: only the phone recognises it",
        )

    def check_missing_sequence(self) -> None:
        missing = str(uuid.uuid4())
        details = self.call("GET /v1/sequences/{missing id}", self.hook.get_sequence, missing)
        contacts = self.call(
            "GET /v1/sequences/{missing id}/contacts", self.hook.list_sequence_contacts, missing, limit=1
        )
        if details.status == 404 and contacts.status == 404:
            self.report.held("errors.missingSequence", "a sequence that does not exist answers 404")
        elif contacts.ok:
            self.report.violated(
                "errors.missingSequence",
                "the contacts of a sequence that does not exist answer 200: "
                "an empty read-back proves nothing unless the sequence was read first",
            )
        else:
            self.report.not_seen(
                "errors.missingSequence",
                f"a missing sequence's details {details.describe()}, its contacts {contacts.describe()}",
            )

    # -- a write Whippy must refuse ----------------------------------------------------------

    def check_refusal_names_item(self) -> None:
        assert self.sequence_id is not None
        call = self.call(
            "POST /v1/sequences/{id}/contacts (a contact without a phone)",
            self.hook.create_sequence_contacts,
            self.sequence_id,
            [{"phone": ""}],
        )
        if call.status not in (400, 422):
            self.report.not_seen("errors.itemNamed", f"a contact without a phone {call.describe()}")
            return
        body = call.body if isinstance(call.body, dict) else {}
        fields = [e.get("field") for e in body.get("errors") or [] if isinstance(e, dict)]
        named = any(isinstance(f, str) and f.startswith("to[") for f in fields)
        self.report.judge(
            "errors.itemNamed",
            named,
            f"a refused contact is named in the {call.status}'s errors (field to[i]...)",
            f"the {call.status} names no contact: a refused batch is split in halves to find it, "
            "each half a write from the 10 a minute",
        )

    def check_error_shapes(self) -> None:
        errors = [e for e in self.recorder.exchanges if 400 <= e.status < 500]
        if not errors:
            self.report.not_seen("errors.shape", "no error answer was seen")
            return
        bad = [e for e in errors if not _is_whippy_error(e.body)]
        self.report.judge(
            "errors.shape",
            not bad,
            f'{len(errors)} error answer(s) were {{"errors": [{{"description"}}]}}',
            f'{len(bad)} of {len(errors)} error answer(s) were not {{"errors": [{{"description"}}]}} '
            f"({', '.join(sorted({e.label for e in bad}))})",
        )

    # -- the opt-in test contact -------------------------------------------------------------


def _is_whippy_error(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("errors"), list)
        and bool(body["errors"])
        and all(isinstance(e, dict) and isinstance(e.get("description"), str) for e in body["errors"])
    )
