"""The Reply.io contract check: what the sync assumes of ``/v3``, asked of the real service.

Read-only unless a test contact is named. The only writes it sends by default are two the
service must refuse and that change nothing either way: an import of no items and a bulk add
of no contacts (they show the error shape and whether the key holds the write scopes).
"""

from __future__ import annotations

from typing import Any

from airflow_provider_sequences.check.base import Call, CheckAborted, first_missing, objects
from airflow_provider_sequences.check.reply_contact import ReplyTestContact
from airflow_provider_sequences.check.report import Exchange, Report, Verdict
from airflow_provider_sequences.hooks.reply import ReplyHook

#: A sequence id no account holds (Reply ids are 32-bit integers counted up from 1).
MISSING_SEQUENCE_ID = 2_147_483_000
#: The largest page documented; Reply's n8n node asks for at most 100.
REPLY_MAX_PAGE = 1000
FALLBACK_PAGE = 100
IDENTITY_HEADERS = ("X-User-Id", "X-User-Email", "X-Team-Id")
IDENTITY_CODES = {"USER_REQUIRED", "TEAM_REQUIRED", "user.notSpecified", "user.forbidden", "user.ambiguous"}
PROBLEM_JSON = "application/problem+json"


class ReplyCheck(ReplyTestContact):
    """Every assumption the sync makes of Reply, judged from Reply's answers.

    :param sequence_id: the sequence to read (and, with ``test_email``, to write to); when
        ``None``, the first sequence listed is read.
    :param test_email: enrol this contact into ``sequence_id`` and read it back.
    """

    service = "reply"

    def __init__(
        self,
        hook: ReplyHook,
        report: Report,
        *,
        sequence_id: int | None = None,
        test_email: str | None = None,
        probes: bool = True,
    ) -> None:
        super().__init__(hook, report, probes=probes)
        self.sequence_id = sequence_id
        self.test_email = test_email
        self.contacts_page = REPLY_MAX_PAGE
        #: Members seen, judged together once every read is done.
        self.members: list[dict[str, Any]] = []
        #: Why Reply skipped the test contact, when it did.
        self.skip_reason: str | None = None

    def run(self) -> None:
        if not self.check_identity():
            return
        self.check_wrong_key()
        self.check_sequences()
        if self.sequence_id is not None:
            self.check_sequence()
            self.check_sequence_contacts()
        self.check_missing_sequence()
        if self.probes:
            self.check_write_probes()
        if self.test_email is not None and self.sequence_id is not None:
            if self.report.verdict("sequence.ready") is Verdict.VIOLATED:
                self.report.note("the test contact was not sent: the sequence cannot take contacts")
            else:
                self.check_test_contact(self.sequence_id, self.test_email)
        self.judge_members()
        self.check_error_shapes()
        self.judge_rate_limit_header("Retry-After", "seconds to wait")

    # -- auth and identity -------------------------------------------------------------------

    def check_identity(self) -> bool:
        sent = [name for name in IDENTITY_HEADERS if name in self.hook.session.headers]
        headers = ", ".join(sent) if sent else "no identity header (a team key acting as its owner)"
        call = self.first_call("GET /v3/whoami", self.hook.whoami)
        if call.error is not None:
            code = call.error.code or ""
            if call.error.status in (400, 403) and code in IDENTITY_CODES:
                advice = {
                    "USER_REQUIRED": "set the connection extra acting_user_id, "
                    "or acting_user_email with acting_team_id",
                    "user.notSpecified": "set the connection extra acting_user_id or acting_user_email",
                    "TEAM_REQUIRED": "set the connection extra acting_team_id (X-Team-Id) as well",
                }.get(code, "check the connection's acting_user_* and acting_team_id extras")
                self.report.violated(
                    "identity.actingUser",
                    f"with {headers}, Reply {call.describe()}: this key needs an acting user; {advice}",
                )
            else:
                self.report.violated("identity.actingUser", f"GET /v3/whoami {call.describe()}")
            self.report.note("nothing else was checked: every endpoint needs an accepted identity")
            return False
        self.report.held("identity.actingUser", f"Reply accepted the key with {headers}")
        user_id = call.result.get("userId") if isinstance(call.result, dict) else None
        self.report.judge(
            "auth.whoami",
            isinstance(user_id, int) and not isinstance(user_id, bool),
            "GET /v3/whoami answers {userId: integer} (the Test button's call)",
            "GET /v3/whoami did not answer an integer userId",
        )
        return True

    def check_wrong_key(self) -> None:
        wrong = self.wrong_key_hook()
        call = self.call("GET /v3/whoami (wrong key)", wrong.whoami)
        bearer = call.last is not None and "bearer" in call.last.headers.get("WWW-Authenticate", "").lower()
        self.report.judge(
            "auth.wrongKey",
            call.status == 401,
            "a wrong key is refused with 401" + (" and WWW-Authenticate: Bearer" if bearer else ""),
            f"a wrong key {call.describe()}, not 401: the sync would not stop on a revoked key",
        )

    # -- lists and sequences -----------------------------------------------------------------

    def _page(self, label: str, path: str, top: int) -> Call:
        return self.call(label, self.hook.request_json, "GET", path, params={"top": top, "skip": 0})

    def _judge_page(self, id: str, label: str, path: str) -> tuple[Call, int]:
        """Ask for a page of ``top=1000``; when refused, of 100. Judges the page size (refused,
        or capped silently: fewer items than asked while ``hasMore`` is true) and the list's
        shape (``items`` and ``hasMore``)."""
        call = self._page(f"{label}?top={REPLY_MAX_PAGE}", path, REPLY_MAX_PAGE)
        top = REPLY_MAX_PAGE
        if call.status == 400:
            self.report.violated(
                f"pageSize.{id}",
                f"top={REPLY_MAX_PAGE} (the documented maximum) {call.describe()}: page at {FALLBACK_PAGE}",
            )
            call, top = self._page(f"{label}?top={FALLBACK_PAGE}", path, FALLBACK_PAGE), FALLBACK_PAGE
        if not call.ok:
            return call, top
        body = call.result
        ok = isinstance(body, dict) and isinstance(body.get("items"), list)
        has_more = ok and isinstance(body.get("hasMore"), bool)
        served = len(body["items"]) if ok else 0
        if top == REPLY_MAX_PAGE and has_more and body["hasMore"] and served < top:
            self.report.violated(
                f"pageSize.{id}",
                f"top={top} answers pages of {served} items with hasMore true: pages are capped "
                "silently, so only hasMore (never a short page) says the list ended",
            )
        elif top == REPLY_MAX_PAGE:
            more = (
                ""
                if has_more and body["hasMore"]
                else " (the list fits one page: a lower cap would not show)"
            )
            self.report.held(f"pageSize.{id}", f"top={REPLY_MAX_PAGE} is accepted{more}")
        self.report.judge(
            f"paging.{id}",
            has_more,
            "answers {items: [...], hasMore: boolean}",
            "answers without items and a boolean hasMore: nothing says whether more pages follow"
            if ok
            else "the answer is not {items: [...], hasMore}",
        )
        return call, top

    def check_sequences(self) -> None:
        call, _ = self._judge_page("sequences", "GET /v3/sequences", "/v3/sequences")
        if not call.ok:
            self.report.violated("sequences.list", f"GET /v3/sequences {call.describe()}")
            return
        items = objects(call.result, "items")
        if items:
            wrong = first_missing(
                items, {"id": (int,), "name": (str,), "status": (str,), "isArchived": (bool,)}
            )
            self.report.judge(
                "sequences.fields",
                not wrong,
                "sequences carry id, name, status and isArchived",
                f"sequences lack (or mistype) {', '.join(wrong)}",
            )
        else:
            self.report.not_seen("sequences.fields", "the acting user sees no sequence")
        if self.sequence_id is None:
            usable = [i["id"] for i in items if isinstance(i.get("id"), int) and not i.get("isArchived")]
            if usable:
                self.sequence_id = usable[0]
                self.report.note(
                    f"read sequence {self.sequence_id}, the first listed (--sequence-id to choose)"
                )

    def check_sequence(self) -> None:
        assert self.sequence_id is not None
        call = self.call("GET /v3/sequences/{id}", self.hook.get_sequence, self.sequence_id)
        if call.error is not None and call.error.status == 404:
            raise CheckAborted(
                f"Reply sequence {self.sequence_id} does not exist or the acting user cannot see it"
            )
        if not call.ok or not isinstance(call.result, dict):
            self.report.violated("sequence.details", f"GET /v3/sequences/{{id}} {call.describe()}")
            return
        sequence = call.result
        steps = sequence.get("steps")
        step_list = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
        wrong = [] if isinstance(steps, list) else ["steps"]
        wrong += [f"steps[].{name}" for name in first_missing(step_list, {"id": (int,)})]
        if not isinstance(sequence.get("isArchived"), bool):
            wrong.append("isArchived")
        self.report.judge(
            "sequence.details",
            not wrong,
            "the sequence carries steps (with integer ids) and isArchived",
            f"the sequence lacks (or mistypes) {', '.join(wrong)}: the sync cannot check the start step"
            if wrong
            else "",
        )
        extras = first_missing(step_list, {"number": (str, int), "type": (str,)})
        if step_list and extras:
            self.report.note(
                f"steps carry no {', '.join(extras)} (position, channel type); the sync does not need them"
            )
        if sequence.get("isArchived") is True:
            self.report.violated(
                "sequence.ready", "the sequence is archived: Reply's own CLI refuses to write to it"
            )
        elif isinstance(steps, list) and not step_list:
            self.report.violated(
                "sequence.ready", "the sequence has no steps: a bulk add answers 400 noStepsInSequence"
            )
        else:
            self.report.held("sequence.ready", "the sequence is not archived and has steps")

    def check_sequence_contacts(self) -> None:
        assert self.sequence_id is not None
        path = f"/v3/sequences/{self.sequence_id}/contacts"
        call, self.contacts_page = self._judge_page(
            "sequenceContacts", "GET /v3/sequences/{id}/contacts", path
        )
        if not call.ok:
            self.report.violated(
                "sequenceContacts.list", f"GET /v3/sequences/{{id}}/contacts {call.describe()}"
            )
            return
        self.members += objects(call.result, "items")

    def judge_members(self) -> None:
        items = self.members
        if not items:
            self.report.not_seen(
                "sequenceContacts.fields",
                "the sequence has no contacts yet (--write-test-contact enrols one to see them)",
            )
            return
        wrong = first_missing(items, {"contactId": (int,), "statusInSequence": (str,)})
        steps = [i.get("currentStep") for i in items if "currentStep" in i]
        as_object = [s for s in steps if isinstance(s, dict)]
        if as_object:
            wrong.append("currentStep (an object {" + ", ".join(sorted(as_object[0])) + "}, not a step id)")
        elif any(s is not None and (not isinstance(s, int) or isinstance(s, bool)) for s in steps):
            wrong.append("currentStep (not a step id)")
        self.report.judge(
            "sequenceContacts.fields",
            not wrong,
            "members carry contactId, statusInSequence and currentStep as a step id",
            f"members differ: {'; '.join(wrong)}",
        )

    def check_missing_sequence(self) -> None:
        call = self.call(
            "GET /v3/sequences/{missing id}/contacts",
            self.hook.list_sequence_contacts,
            MISSING_SEQUENCE_ID,
            top=FALLBACK_PAGE,
        )
        if call.status == 404:
            self.report.held("errors.missingSequence", "a sequence that does not exist answers 404")
        elif call.ok and not objects(call.result, "items"):
            self.report.violated(
                "errors.missingSequence",
                "the contacts of a sequence that does not exist answer an empty 200, not 404: "
                "an empty read-back proves nothing unless the sequence was read first",
            )
        else:
            self.report.not_seen(
                "errors.missingSequence", f"a probe for a missing sequence {call.describe()}"
            )

    # -- writes Reply must refuse ------------------------------------------------------------

    def check_write_probes(self) -> None:
        call = self.call(
            "POST /v3/contacts/import (no items)",
            self.hook.request_json,
            "POST",
            "/v3/contacts/import",
            json={"items": [], "options": {"overwriteExisting": False, "skipExisting": False}},
        )
        self._judge_scope("scopes.contactsWrite", "import contacts", call)
        if self.sequence_id is None:
            self.report.not_seen("scopes.sequencesOperate", "no sequence to probe a bulk add on")
            return
        call = self.call(
            "POST /v3/sequences/{id}/contact-links/bulk (no contacts)",
            self.hook.add_contacts_to_sequence,
            self.sequence_id,
            [],
        )
        self._judge_scope("scopes.sequencesOperate", "add contacts to sequences", call)
        if call.ok:
            self._judge_bulk_answer(call.result, set())

    def _judge_scope(self, id: str, what: str, call: Call) -> None:
        if call.status == 403:
            self.report.violated(id, f"the key may not {what}: Reply {call.describe()}")
        elif call.status is not None and call.status < 500:
            self.report.held(id, f"the key may {what} (an empty request {call.describe()})")
        else:
            self.report.not_seen(id, f"an empty request {call.describe()}")

    def check_error_shapes(self) -> None:
        errors = [e for e in self.recorder.exchanges if 400 <= e.status < 500 and e.status not in (401, 429)]
        if not errors:
            self.report.not_seen("errors.problemJson", "no error answer other than 401 and 429 was seen")
            return
        bad = [e for e in errors if not _is_problem(e)]
        self.report.judge(
            "errors.problemJson",
            not bad,
            f"{len(errors)} error answer(s) were application/problem+json with title, status and a code",
            f"{len(bad)} of {len(errors)} error answer(s) were not problem+json with a code "
            f"({', '.join(sorted({e.label for e in bad}))})",
        )
        field_errors = [
            e for e in errors if e.status == 400 and isinstance(e.body, dict) and "errors" in e.body
        ]
        if not field_errors:
            self.report.not_seen("errors.fieldErrors", "no 400 with field errors was seen")
            return
        pinned = all(
            isinstance(e.body["errors"], list)
            and all(
                isinstance(item, dict)
                and any(isinstance(item.get(k), str) for k in ("pointer", "parameter", "field"))
                for item in e.body["errors"]
            )
            for e in field_errors
        )
        self.report.judge(
            "errors.fieldErrors",
            pinned,
            "a 400's errors[] each name their field (JSON Pointer)",
            "a 400's errors[] do not name their field: the sync cannot tell which row was refused",
        )

    # -- the opt-in test contact -------------------------------------------------------------


def _is_problem(exchange: Exchange) -> bool:
    body = exchange.body
    return (
        exchange.media_type == PROBLEM_JSON
        and isinstance(body, dict)
        and isinstance(body.get("title"), str)
        and isinstance(body.get("code"), str)
    )
