"""Hook for the Reply.io public API (v3)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.base import (
    PageGuard,
    RateBucket,
    SequencesHook,
    decode_json,
    iso_datetime,
    path_segment,
)

#: Documented limits per user: 100 requests a minute and 3,000 an hour.
REPLY_REQUESTS_PER_MINUTE = 100
REPLY_REQUESTS_PER_HOUR = 3000
#: Undocumented maximum of ids per bulk add; related bulk endpoints cap at 1000.
REPLY_MAX_BULK_IDS = 1000
REPLY_MAX_PAGE = 1000


def _pointer_to_field(pointer: str) -> str:
    """``/contactIds/2`` -> ``contactIds[2]``: a JSON Pointer as a person reads a field."""
    text = ""
    for part in (part for part in pointer.split("/") if part):
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or pointer


def reply_sequence_id(value: Any) -> int:
    """A Reply sequence id as the positive integer it is (``" 1001"`` and ``1001`` are one
    sequence, so one sync state); anything else is a clear :class:`ValueError`."""
    if isinstance(value, bool):
        raise ValueError(f"a Reply sequence id must be a positive whole number, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise ValueError("the Reply sequence_id is empty: set it to the sequence's number")
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"a Reply sequence id must be a positive whole number, got {text!r}")
    return int(text)


#: What to do about the errors a person can fix, by Reply's code.
_HINTS = {
    "USER_REQUIRED": "an organization key must name the acting user: set the connection extra "
    "acting_user_id, or acting_user_email together with acting_team_id",
    "TEAM_REQUIRED": "this credential must name the team to act in: set the connection extra acting_team_id",
    "insufficient_scope": "the API key lacks a scope the sync needs (contacts:read, contacts:write, "
    "sequences:read, sequences:operate): grant it in Reply or use another key",
    "sequenceContact.noStepsInSequence": "add at least one step to the sequence in Reply",
    "sequenceContact.contactLimitExceeded": "the Reply plan's limit of contacts in sequences is reached",
}


class ReplyHook(SequencesHook):
    """Talks to the Reply.io API v3 with an API key from an Airflow connection.

    Connection (type ``reply``): the password holds the API key; the host, when set, replaces
    ``https://api.reply.io``. Extras:

    - ``acting_user_id`` / ``acting_user_email``: act as another user of the team (sent as
      ``X-User-Id`` / ``X-User-Email``); required with an organization key.
    - ``acting_team_id``: the team to act in (``X-Team-Id``, and part of the account's name);
      Reply's CLI reports that an acting user named by email, or a key that reaches several
      teams, needs it.
    - ``requests_per_minute`` (100), ``requests_per_hour`` (3000): client-side limits; lower
      them when other tools spend the same user's budget.
    - ``timeout`` (60, read timeout in seconds), ``max_attempts`` (6);
    - ``request_deadline`` (300 s, the whole request), ``max_answer_mb`` (64),
      ``max_retry_wait`` (900 s: a longer wait asked for stops the run);
    - ``rate_limit_conn_id``: where the rate budget lives (see :mod:`.budget`).
    - ``rate_limit_time_scale`` (1): for simulators only, shortens the limit windows.

    Methods map one to one to API endpoints and return the parsed JSON.

    :param reply_conn_id: the Airflow connection id (default ``reply_default``).
    """

    conn_name_attr = "reply_conn_id"
    default_conn_name = "reply_default"
    conn_type = "reply"
    hook_name = "Reply.io"
    default_base_url = "https://api.reply.io"
    api_prefix = "/v3"
    #: The web app, for links from Airflow's UI.
    web_url: ClassVar[str] = "https://run.reply.io"

    def __init__(self, reply_conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(reply_conn_id, **kwargs)

    # -- SequencesHook ------------------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if user_id := self.extras.get("acting_user_id"):
            headers["X-User-Id"] = str(user_id)
        elif user_email := self.extras.get("acting_user_email"):
            headers["X-User-Email"] = str(user_email)
        if team_id := self.extras.get("acting_team_id"):
            headers["X-Team-Id"] = str(team_id)
        return headers

    def rate_buckets(self) -> list[RateBucket]:
        per_minute = int(self.extra_number("requests_per_minute", REPLY_REQUESTS_PER_MINUTE))
        per_hour = int(self.extra_number("requests_per_hour", REPLY_REQUESTS_PER_HOUR))
        if per_minute >= per_hour:
            # The hourly limit is then the only one that binds.
            return [RateBucket("all", ((per_hour, 3600.0),))]
        return [RateBucket("all", ((per_minute, 60.0), (per_hour, 3600.0)))]

    def bucket_for(self, method: str, path: str) -> str:
        return "all"

    #: Reply counts per acting user, whichever key acts for them: learnt with ``whoami``.
    account_needs_request = True

    def resolve_account(self) -> str:
        """``reply:<host>:user-<id>[:team-<id>]``: the acting user (the ``acting_user_id``
        extra, else ``whoami``'s answer) and the team (the ``acting_team_id`` extra), if any."""
        user = self.extras.get("acting_user_id")
        if user is None or not str(user).strip().isdigit():
            user = self.whoami().get("userId")
        account = f"reply:{urlsplit(self.base_url).netloc}:user-{user}"
        team = self.extras.get("acting_team_id")
        return f"{account}:team-{team}" if team else account

    error_hints = _HINTS

    def describe_error(self, body: dict[str, Any]) -> tuple[str | None, str | None, list[dict[str, Any]]]:
        errors = [
            {
                "field": _pointer_to_field(
                    str(e.get("pointer") or e.get("parameter") or e.get("field") or "")
                ),
                "detail": e.get("detail") or e.get("title") or e.get("message") or "",
            }
            for e in body.get("errors") or []
            if isinstance(e, dict)
        ]
        return body.get("code"), body.get("detail") or body.get("title"), errors

    def check_credentials(self) -> str:
        user_id = self.whoami().get("userId")
        return f"Connected to Reply at {self.base_url} as user {user_id}"

    # -- endpoints ----------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """``GET /v3/whoami``: the user the key acts as, ``{"userId": ...}``."""
        return self.expect_object(self.request_json("GET", "/v3/whoami"), "GET", "/v3/whoami")

    def list_sequences(
        self, *, status: str | None = None, name: str | None = None, page_size: int = REPLY_MAX_PAGE
    ) -> list[dict[str, Any]]:
        """``GET /v3/sequences``, every page: all sequences the acting user sees.

        :param status: ``active``, ``paused`` or ``new``.
        :param name: filter by name.
        :param page_size: ``top`` per page (at most 1000).
        """
        return list(self._pages("/v3/sequences", {"status": status, "name": name}, page_size))

    def get_sequence(self, sequence_id: int) -> dict[str, Any]:
        """``GET /v3/sequences/{id}``: the sequence with its ``steps`` and ``settings``."""
        path = f"/v3/sequences/{reply_sequence_id(sequence_id)}"
        return self.expect_object(self.request_json("GET", path), "GET", path)

    def list_steps(self, sequence_id: int) -> list[dict[str, Any]]:
        """``GET /v3/sequences/{id}/steps``."""
        path = f"/v3/sequences/{reply_sequence_id(sequence_id)}/steps"
        result = self.request_json("GET", path)
        if isinstance(result, list):
            return result
        items: list[dict[str, Any]] = self.expect_object(result, "GET", path, ("items", list))["items"]
        return items

    def list_sequence_contacts(
        self, sequence_id: int, *, top: int = REPLY_MAX_PAGE, skip: int = 0
    ) -> dict[str, Any]:
        """``GET /v3/sequences/{id}/contacts``: one page, ``{"items": [...], "hasMore": bool}``."""
        path = f"/v3/sequences/{reply_sequence_id(sequence_id)}/contacts"
        result = self.request_json("GET", path, params={"top": top, "skip": skip})
        return self.expect_object(result, "GET", path, ("items", list))

    def iter_sequence_contacts(
        self, sequence_id: int, *, page_size: int = REPLY_MAX_PAGE
    ) -> Iterator[dict[str, Any]]:
        """Every contact of a sequence (``contactId``, ``statusInSequence``, ``currentStep``)."""
        return self._pages(f"/v3/sequences/{reply_sequence_id(sequence_id)}/contacts", {}, page_size)

    def import_contacts(
        self,
        items: Sequence[dict[str, Any]],
        *,
        overwrite_existing: bool = False,
        skip_existing: bool = False,
        detect_time_zone: bool = False,
        list_ids: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """``POST /v3/contacts/import``: create or update contacts in bulk, matched by email.

        Answers ``{"items": [{"id", "status", "error"}], "added", "updated", "skipped",
        "failed"}`` with items in input order. When Reply runs a large import in the
        background (202), this waits for the job and returns its result.

        :param items: contacts (``email``, ``firstName``, ..., ``customFields``).
        :param overwrite_existing: update fields of contacts that already exist.
        :param skip_existing: leave existing contacts untouched.
        :param detect_time_zone: let Reply set ``timeZoneId`` from the location.
        :param list_ids: contact lists to add the contacts to.
        """
        options: dict[str, Any] = {
            "overwriteExisting": overwrite_existing,
            "skipExisting": skip_existing,
            "detectTimeZone": detect_time_zone,
        }
        if list_ids:
            options["listIds"] = [int(i) for i in list_ids]
        # An upsert by email: sending it twice changes nothing, so retries are safe.
        response = self.request(
            "POST", "/v3/contacts/import", json={"items": list(items), "options": options}
        )
        path = "/v3/contacts/import"
        if response.status_code == 202:
            job_path = response.headers.get("Location", "").split("?", 1)[0].rstrip("/")
            if not job_path:
                raise self.unexpected("POST", path, 202, "a 202 (background job) without a Location header")
            return self.wait_for_background_job(job_path.rsplit("/", 1)[-1])
        try:
            result = decode_json(response.content) if response.content else None
        except ValueError:
            result = b"not JSON"
        return self.expect_object(result, "POST", path, ("items", list))

    def get_background_job(self, job_id: str) -> dict[str, Any]:
        """``GET /v3/background-jobs/{jobId}``: ``{jobId, status, progress, ...}``."""
        path = f"/v3/background-jobs/{path_segment(job_id, 'background job id')}"
        return self.expect_object(self.request_json("GET", path), "GET", path)

    def wait_for_background_job(
        self, job_id: str, *, timeout: float = 3600.0, poll_interval: float = 5.0
    ) -> dict[str, Any]:
        """Poll a background job until it is ``Done`` and return its ``result``.

        :raises SequencesApiError: when the job fails or ``timeout`` seconds pass.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_background_job(job_id)
            status = str(job.get("status", ""))
            if status == "Done":
                return self._job_result(job_id, job)
            if status not in ("Scheduled", "Processing", "Queued", "Pending") or time.monotonic() > deadline:
                raise SequencesApiError(
                    service=self.hook_name,
                    method="GET",
                    path=f"/v3/background-jobs/{job_id}",
                    status=None,
                    code="backgroundJobFailed" if status not in ("Scheduled", "Processing") else "timeout",
                    detail=f"background job {job_id} is {status or 'unknown'}",
                )
            self.log.info("Reply background job %s is %s (%s%%)", job_id, status, job.get("progress", "?"))
            time.sleep(min(poll_interval, max(deadline - time.monotonic(), 0.1)))

    def _job_result(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        # Reply documents the result as a JSON string in jsonDataResult; earlier answers
        # (and this project's documented simulator) carry it as an object in result.
        raw = job.get("jsonDataResult")
        if isinstance(raw, str) and raw:
            try:
                loaded = decode_json(raw.encode())
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                return loaded
            raise SequencesApiError(
                service=self.hook_name,
                method="GET",
                path=f"/v3/background-jobs/{job_id}",
                status=None,
                code="unexpectedAnswer",
                detail=f"background job {job_id} is Done but its jsonDataResult is not a JSON object",
            )
        result: dict[str, Any] = job.get("result") or {}
        return result

    def find_contact_by_email(self, email: str) -> dict[str, Any] | None:
        """``GET /v3/contacts?email=``: the contact with this email, or ``None``."""
        result = self.request_json("GET", "/v3/contacts", params={"email": email})
        items = self.expect_object(result, "GET", "/v3/contacts", ("items", list))["items"]
        return items[0] if items else None

    def add_contacts_to_sequence(
        self,
        sequence_id: int,
        contact_ids: Sequence[int],
        *,
        remove_from_existing: bool = False,
        start_step_id: int | None = None,
        ignore_step_delay: bool = False,
        start_from: datetime | str | None = None,
    ) -> dict[str, Any]:
        """``POST /v3/sequences/{id}/contact-links/bulk``: enrol existing contacts.

        Non-atomic: answers ``{"added": [ids], "notProcessed": {"<id>": error}}`` where an
        error is ``{"error": slug, "errorDetails": text}`` (or a bare slug). Never retried
        after a lost answer: it raises
        :class:`~airflow_provider_sequences.exceptions.OutcomeUnknownError`, and the caller
        reads the sequence's contacts to learn what happened.

        :param sequence_id: the sequence.
        :param contact_ids: Reply contact ids, at most 1000 per call.
        :param remove_from_existing: take the contacts out of their current sequences first.
        :param start_step_id: the step to start at (default: the first).
        :param ignore_step_delay: skip the delay before the first step.
        :param start_from: when processing begins (default: now); an aware datetime or ISO text.
        """
        body: dict[str, Any] = {
            "contactIds": [int(i) for i in contact_ids],
            "removeFromExisting": remove_from_existing,
            "startStepId": start_step_id,
            "ignoreStepDelay": ignore_step_delay,
            "startFrom": iso_datetime(start_from),
        }
        # Not repeated after a lost answer: Reply's CLI reports that naming a member again moves
        # it forward (a later start step) or may reassign its mailbox. The caller reads the
        # sequence back instead (OutcomeUnknownError), also for an answer it cannot read.
        path = f"/v3/sequences/{reply_sequence_id(sequence_id)}/contact-links/bulk"
        result = self.expect_object(
            self.request_json("POST", path, json=body, repeat_safe=False), "POST", path, repeat_safe=False
        )
        # Either part may be left out when empty, not both: ``{}`` says nothing about anyone.
        added, not_processed = result.get("added"), result.get("notProcessed")
        if (
            (added is None and not_processed is None)
            or not isinstance(added, (list, type(None)))
            or not isinstance(not_processed, (dict, type(None)))
        ):
            self.expect_object(
                result, "POST", path, ("added", list), ("notProcessed", dict), repeat_safe=False
            )
        return result

    def remove_contacts_from_sequence(self, sequence_id: int, contact_ids: Sequence[int]) -> dict[str, Any]:
        """``POST /v3/sequences/{id}/contact-links/bulk-delete``.

        Answers ``{requested, removed, notFound, notInSequence, removedIds}``.
        """
        path = f"/v3/sequences/{reply_sequence_id(sequence_id)}/contact-links/bulk-delete"
        result = self.request_json("POST", path, json={"contactIds": [int(i) for i in contact_ids]})
        return self.expect_object(result, "POST", path)

    def _pages(self, path: str, params: dict[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
        skip = 0
        guard = PageGuard(self, path, page_size)
        while True:
            page = self.request_json("GET", path, params={**params, "top": page_size, "skip": skip})
            items: list[Any] = self.expect_object(page, "GET", path, ("items", list))["items"]
            more = page.get("hasMore")
            if not isinstance(more, (bool, type(None))):
                self.expect_object(page, "GET", path, ("hasMore", bool))
            guard.check(items, offset=skip, more=bool(more))
            yield from items
            if not more or not items:
                return
            skip += len(items)
