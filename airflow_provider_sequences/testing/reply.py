"""A Reply.io API v3 simulator, exactly as strict as the contract in ``shared/api/reply.md``.

Endpoints, with the key scope each needs:

============================================================  ======================
``GET  /v3/whoami``                                            (any valid key)
``GET  /v3/sequences``                                         ``sequences:read``
``GET  /v3/sequences/{id}``                                    ``sequences:read``
``GET  /v3/sequences/{id}/steps`` (a plain JSON array)         ``sequences:read``
``GET  /v3/sequences/{id}/contacts``                           ``sequences:read``
``POST /v3/sequences/{id}/contact-links/bulk``                 ``sequences:operate``
``POST /v3/sequences/{id}/contact-links/bulk-delete``          ``sequences:operate``
``POST /v3/contacts/import``                                   ``contacts:write``
``GET  /v3/contacts?email=``                                   ``contacts:read``
``GET  /v3/background-jobs/{jobId}``                           (any valid key)
============================================================  ======================

Every request passes, in this order: the key (401, empty body), the acting user (400/403),
the rate limit of the acting user (429), the scope (403), then the endpoint's own checks.

Choices of this simulator where the contract is silent:

- Visibility: the acting user sees only what they own. Someone else's sequence is a 404,
  someone else's contact is ``forbidden`` in a bulk add, ``notFound`` in a bulk delete and
  absent from ``GET /v3/contacts``; importing an email another user owns fails that item.
- Emails are unique across the account, compared case-insensitively.
- Request bodies are typed as the service's models are: a value of the wrong JSON type
  anywhere (``"7"`` or ``1.5`` for an integer, ``null`` or ``"true"`` for a boolean) rejects
  the whole request with a 400 listing every such value. Bodies must be ``application/json``
  (else 415). ``startFrom`` must carry an offset (``Z`` or ``+hh:mm``) and not be in the past.
- 400s for query parameters point at them with ``{"parameter": "top", "detail": ...}``
  instead of a JSON Pointer; body errors carry ``{"pointer": "/contactIds/2", "detail": ...}``.
- A link's ``currentStep`` is a step id: ``startStepId`` or else the sequence's first step.
- Import: ``skipExisting`` leaves a match as it is (``Skipped``); ``overwriteExisting``
  replaces every field the item carries; with neither, a match only gets the fields it lacks
  (still ``Updated``). Both at once is a 400. ``detectTimeZone`` and ``listIds`` are
  accepted and checked for type only. A missing or empty email counts as an invalid one.
- Background imports (``import_async_threshold``) are validated and applied when accepted;
  the 202 body is ``{"jobId", "status": "Scheduled"}`` and the job reports ``Processing``
  until ``job_delay`` real seconds have passed, then ``Done`` with ``"result"``: the same
  body a synchronous import answers. That ``result`` field is our assumption, not the docs'.
- Problem ``type`` is ``https://api.reply.io/problems/<code>``.

``behaviour="observed"`` answers as Reply's own CLI (``reply-team/reply-cli``) reports the
real server does (``shared/api/reply.md``, "What Reply's own CLI reports"); where that
evidence leaves a choice, the harder case for a client:

- Bulk add: every per-contact refusal is ``{"error": "invalidInput", "errorDetails":
  "Contact could not be added to sequence"}``, never ``contactAlreadyInSequence``. A member
  named again with a ``startStepId`` after its current step is moved there and answered
  ``added`` (``sim.moves``); with the same, an earlier or no step it is refused. A plan limit
  the request would pass is a whole-request 400 ``sequenceContact.contactLimitExceeded``
  (nothing added), a sequence without steps 400 ``sequenceContact.noStepsInSequence``.
  Archived sequences are accepted, in both behaviours (the CLI refuses them itself).
- Import: an item without ``firstName`` makes the whole call a 400 pinned to
  ``/items/<i>/firstName``. Statuses are lowercase; the user's own deleted contact is
  ``restored``; an email another user's contact holds is ``skipped`` with ``skipReason``
  (``contactDeleted`` or ``contactOwnedByTeammate``) and the item's ``id`` is that contact's.
- Background jobs: ``progress`` 0..1 and the result as a JSON string in ``jsonDataResult``.
- Identity: an organization key with neither ``X-User-Id`` nor ``X-User-Email`` is 403
  ``USER_REQUIRED``; with ``X-User-Email`` and no ``X-Team-Id``, or any key that reaches
  several teams without one, 403 ``TEAM_REQUIRED``. A missing scope is 403
  ``insufficient_scope``.
- Sequence contacts: ``currentStep`` is ``{stepId, displayName}``; a page holds at most 100
  items whatever ``top`` asks (silently: ``hasMore`` says more follow); a sequence the user
  cannot see answers an empty 200 instead of a 404.

Ground truth for both: ``enrolments``, ``readds`` (bulk adds that named a member again),
``moves`` and ``foreign_adds`` (bulk adds that named another user's contact).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_sequences.testing.base import (
    DEFAULT_BEHAVIOUR,
    Behaviour,
    Simulator,
    check_behaviour,
    json_response,
)
from airflow_provider_sequences.testing.faults import CannedResponse
from airflow_provider_sequences.testing.ratelimit import Limit
from airflow_provider_sequences.testing.reply_data import (
    OBSERVED_MAX_PAGE,
    SEQUENCE_STATUSES,
    ApiKey,
    KeyKind,
    ReplyData,
    Sequence,
    email_key,
)
from airflow_provider_sequences.testing.reply_requests import (
    PROBLEM_JSON,
    ProblemError,
    Unauthorized,
    check_import_schema,
    email_error,
    int_list,
    invalid,
    json_body,
    length_error,
    page,
    parse_bulk_add,
    path_id,
    plain_items,
    problem_body,
    problem_response,
    retry_after,
)

#: Per acting user, shared by every key acting for them.
RATE_LIMITS = [Limit(100, 60), Limit(3000, 3600)]


def rate_limit_identity(user_id: int) -> str:
    """The limiter identity of a user (tests may pre-fill ``sim.limiter`` with it)."""
    return f"user:{user_id}"


# -- the simulator ----------------------------------------------------------------------------


class ReplySimulator(Simulator):
    """An in-memory Reply.io account behind a real HTTP server (see the module docstring).

    Set it up through the Python API (``add_user``, ``add_api_key``, ``add_sequence``,
    ``add_contact``), point a client at :attr:`url`, then read the ground truth
    (``enrolments``, ``sequence_contacts``, ``contact``) and :attr:`requests`. Every method is
    safe to call while the server thread runs.

    :param time_scale: simulated seconds per real second for the rate limits.
    :param enforce_rate_limits: answer 429 over 100 requests a minute or 3,000 an hour.
    :param contact_limit: plan limit on contacts active in sequences (``None``: no limit);
        over it, bulk add answers ``contactLimitExceeded`` for that contact.
    :param max_bulk_ids: most ``contactIds`` per bulk add or bulk delete (undocumented; 1000).
    :param max_import_items: most items per import (undocumented; 1000).
    :param import_rejects_whole_batch_on_invalid_email: one invalid email makes the whole
        import a 400 pointing at ``/items/<i>/email``; when False only that item fails.
    :param import_async_threshold: imports of more items than this answer 202 with a
        background job (``None``: never).
    :param job_delay: real seconds a background job takes before it reports ``Done``.
    :param behaviour: ``documented`` (the reference docs) or ``observed`` (what Reply's own
        CLI reports the real server does; see the module docstring).
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        enforce_rate_limits: bool = True,
        contact_limit: int | None = None,
        max_bulk_ids: int = 1000,
        max_import_items: int = 1000,
        import_rejects_whole_batch_on_invalid_email: bool = True,
        import_async_threshold: int | None = None,
        job_delay: float = 0.0,
        behaviour: Behaviour = DEFAULT_BEHAVIOUR,
    ) -> None:
        # The base builds the app, so the state must exist first.
        self.data = ReplyData(contact_limit, observed=check_behaviour(behaviour) == "observed")
        self.max_bulk_ids = max_bulk_ids
        self.max_import_items = max_import_items
        self.import_rejects_whole_batch_on_invalid_email = import_rejects_whole_batch_on_invalid_email
        self.import_async_threshold = import_async_threshold
        self.job_delay = job_delay
        super().__init__(time_scale=time_scale, enforce_rate_limits=enforce_rate_limits, behaviour=behaviour)

    # -- Python API for tests ------------------------------------------------------------------

    def add_user(self, email: str) -> int:
        """Create a user of the account; returns its id."""
        with self.lock:
            return self.data.add_user(email)

    def add_api_key(
        self,
        key: str,
        user_id: int,
        *,
        kind: KeyKind = "team",
        scopes: set[str] | None = None,
        members: list[int] | None = None,
        teams: list[int] | None = None,
    ) -> None:
        """Register an API key owned by ``user_id``.

        :param kind: ``"team"`` acts as its owner unless ``X-User-Id``/``X-User-Email`` names
            another allowed user; ``"organization"`` must always name the acting user.
        :param scopes: granted scopes (``None``: all of ``contacts:read``, ``contacts:write``,
            ``sequences:read``, ``sequences:operate``).
        :param members: users the key may act for besides its owner.
        :param teams: the teams the key reaches (default ``[1]``); observed, a key that reaches
            several needs ``X-Team-Id``.
        """
        with self.lock:
            self.data.add_api_key(key, user_id, kind, scopes, members, teams)

    def add_sequence(self, name: str, *, owner_user_id: int, status: str = "active", steps: int = 3) -> int:
        """Create a sequence with ``steps`` email steps; returns its id."""
        with self.lock:
            return self.data.add_sequence(name, owner_user_id, status, steps)

    def add_contact(self, email: str, *, owner_user_id: int, **fields: Any) -> int:
        """Create a contact; returns its id.

        ``fields`` are API field names (``firstName``, ``customFields``, ...) plus
        ``invalid=True`` to flag the contact invalid and ``deleted=True`` to make it a deleted
        one (an import restores or skips it). An empty ``email`` makes a contact without one.
        """
        invalid_flag = bool(fields.pop("invalid", False))
        deleted = bool(fields.pop("deleted", False))
        with self.lock:
            return self.data.add_contact(email, owner_user_id, invalid_flag, fields, deleted=deleted)

    def archive_sequence(self, sequence_id: int) -> None:
        """Archive a sequence (``isArchived``); a bulk add into it is still accepted."""
        with self.lock:
            self.data.sequences[sequence_id].is_archived = True

    def contact(self, contact_id: int) -> dict[str, Any]:
        """A contact as the API returns it; ``KeyError`` if unknown."""
        with self.lock:
            return self.data.contacts[contact_id].to_api()

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        """The contact with this email (any owner, case-insensitive), or ``None``."""
        with self.lock:
            contact_id = self.data.by_email.get(email_key(email))
            return self.data.contacts[contact_id].to_api() if contact_id is not None else None

    @property
    def enrolments(self) -> dict[tuple[int, int], int]:
        """Ground truth (a copy): (sequence id, contact id) -> times the contact was added."""
        with self.lock:
            return dict(self.data.enrolments)

    @property
    def readds(self) -> dict[tuple[int, int], int]:
        """Ground truth (a copy): (sequence id, contact id) -> bulk adds that named a contact
        already in that sequence (a sync should send none: observed, they move or refuse it)."""
        with self.lock:
            return dict(self.data.readds)

    @property
    def moves(self) -> dict[tuple[int, int], int]:
        """Observed ground truth: (sequence id, contact id) -> re-adds that moved a member forward."""
        with self.lock:
            return dict(self.data.moves)

    @property
    def foreign_adds(self) -> dict[tuple[int, int], int]:
        """Ground truth: (sequence id, contact id) -> bulk adds that named another user's contact."""
        with self.lock:
            return dict(self.data.foreign_adds)

    def sequence_contacts(self, sequence_id: int) -> list[dict[str, Any]]:
        """Ground truth: the contacts now in a sequence, in the order they were added.

        Each is ``{contactId, email, statusInSequence, currentStep, ignoreStepDelay,
        startFrom, addedAt}``; ``KeyError`` for an unknown sequence.
        """
        with self.lock:
            return self.data.sequence_contacts(sequence_id)

    # -- canned answers for the fault injector -------------------------------------------------

    def rate_limited_response(self, wait_seconds: float) -> CannedResponse:
        body = problem_body(429, "rate limit exceeded", "rateLimit.exceeded")
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"retry-after", retry_after(wait_seconds).encode()),
        ]
        return 429, headers, json.dumps(body).encode()

    def server_error_response(self) -> CannedResponse:
        body = problem_body(500, "an unexpected error occurred", "server.error")
        return 500, [(b"content-type", PROBLEM_JSON.encode())], json.dumps(body).encode()

    # -- the app -------------------------------------------------------------------------------

    def _authorize(self, request: Request, scope: str | None) -> int:
        """Check key, acting user, rate limit and scope, in that order; returns the acting user."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self.lock:
            key = self.data.keys.get(token.strip()) if scheme.lower() == "bearer" else None
            if key is None:
                raise Unauthorized
            user_id = self._acting_user(request, key)
            if not key.may_act_for(user_id):
                raise ProblemError(403, f"this API key may not act for user {user_id}", "user.forbidden")
        if self.enforce_rate_limits:
            wait = self.limiter.hit(rate_limit_identity(user_id), "all", RATE_LIMITS)
            if wait > 0:
                raise ProblemError(
                    429,
                    "rate limit exceeded",
                    "rateLimit.exceeded",
                    headers={"Retry-After": retry_after(wait)},
                )
        if scope is not None and scope not in key.scopes:
            code = "insufficient_scope" if self.observed else "auth.missingScope"
            raise ProblemError(403, f"this API key lacks the scope {scope!r}", code)
        return user_id

    def _acting_user(self, request: Request, key: ApiKey) -> int:
        raw_id, raw_email = request.headers.get("x-user-id"), request.headers.get("x-user-email")
        if self.observed:
            self._check_team(request, key, raw_id, raw_email)
        named: set[int] = set()
        if raw_id is not None:
            if not raw_id.strip().isdigit():
                invalid([{"parameter": "X-User-Id", "detail": "must be an integer user id"}])
            named.add(int(raw_id))
        if raw_email is not None:
            by_email = self.data.user_by_email(raw_email)
            if by_email is None:
                raise ProblemError(403, "this API key may not act for that user", "user.forbidden")
            named.add(by_email)
        if len(named) > 1:
            raise ProblemError(400, "X-User-Id and X-User-Email name different users", "user.ambiguous")
        if named:
            return named.pop()
        if key.kind == "organization" and self.observed:
            raise ProblemError(
                403, "an organization key needs an acting user: X-User-Id, or X-User-Email", "USER_REQUIRED"
            )
        if key.kind == "organization":
            raise ProblemError(
                400,
                "an organization key must name the acting user (X-User-Id or X-User-Email)",
                "user.notSpecified",
            )
        return key.owner_user_id

    @staticmethod
    def _check_team(request: Request, key: ApiKey, raw_id: str | None, raw_email: str | None) -> None:
        """Observed: a user named by email, or a key that reaches several teams, needs
        ``X-Team-Id`` (one of the key's teams)."""
        raw_team = request.headers.get("x-team-id")
        if raw_team is None:
            if key.kind == "organization" and raw_id is None and raw_email is None:
                return  # USER_REQUIRED comes first
            by_email_only = raw_email is not None and raw_id is None
            if (key.kind == "organization" and by_email_only) or len(key.teams) > 1:
                raise ProblemError(
                    403, "this credential needs the acting team: add X-Team-Id", "TEAM_REQUIRED"
                )
            return
        if not raw_team.strip().isdigit() or int(raw_team) not in key.teams:
            raise ProblemError(403, "this API key may not act for that team", "team.forbidden")

    def _sequence(self, raw_id: str, user_id: int) -> Sequence:
        sequence_id = path_id(raw_id)
        sequence = self.data.visible_sequence(sequence_id, user_id)
        if sequence is None:
            raise ProblemError(404, f"sequence {sequence_id} was not found", "sequence.notFound")
        return sequence

    def build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        self._add_error_handlers(app)
        self._add_sequence_routes(app)
        self._add_link_routes(app)
        self._add_contact_routes(app)
        return app

    def _add_sequence_routes(self, app: FastAPI) -> None:
        @app.get("/v3/whoami")
        async def whoami(request: Request) -> dict[str, Any]:
            return {"userId": self._authorize(request, None)}

        @app.get("/v3/sequences")
        async def list_sequences(request: Request) -> dict[str, Any]:
            user_id = self._authorize(request, "sequences:read")
            status = request.query_params.get("status")
            if status is not None and status not in SEQUENCE_STATUSES:
                invalid([{"parameter": "status", "detail": f"must be one of {sorted(SEQUENCE_STATUSES)}"}])
            with self.lock:
                found = self.data.list_sequences(user_id, status, request.query_params.get("name"))
                return page([s.summary() for s in found], request)

        @app.get("/v3/sequences/{sequence_id}")
        async def get_sequence(sequence_id: str, request: Request) -> dict[str, Any]:
            user_id = self._authorize(request, "sequences:read")
            with self.lock:
                sequence = self._sequence(sequence_id, user_id)
                return {**sequence.summary(), "steps": sequence.steps(), "settings": _SETTINGS}

        @app.get("/v3/sequences/{sequence_id}/steps")
        async def list_steps(sequence_id: str, request: Request) -> list[dict[str, Any]]:
            user_id = self._authorize(request, "sequences:read")
            with self.lock:
                return self._sequence(sequence_id, user_id).steps()

        @app.get("/v3/sequences/{sequence_id}/contacts")
        async def sequence_contacts(sequence_id: str, request: Request) -> dict[str, Any]:
            user_id = self._authorize(request, "sequences:read")
            with self.lock:
                if self.observed and self.data.visible_sequence(path_id(sequence_id), user_id) is None:
                    # Reply's CLI: a missing sequence may answer an empty list.
                    return {"items": [], "hasMore": False}
                links = self.data.sequence_contacts(
                    self._sequence(sequence_id, user_id).id, observed=self.observed
                )
            fields = ("contactId", "email", "statusInSequence", "currentStep")
            cap = OBSERVED_MAX_PAGE if self.observed else None
            return page([{f: link[f] for f in fields} for link in links], request, max_items=cap)

    def _add_link_routes(self, app: FastAPI) -> None:
        @app.post("/v3/sequences/{sequence_id}/contact-links/bulk")
        async def bulk_add(sequence_id: str, request: Request) -> Response:
            user_id = self._authorize(request, "sequences:operate")
            body = await json_body(request)
            if isinstance(body.get("contactIds"), list):
                request.state.items = len(body["contactIds"])
            parsed = parse_bulk_add(body, self.max_bulk_ids)
            with self.lock:
                sequence = self._sequence(sequence_id, user_id)
                if parsed.start_step_id is not None and parsed.start_step_id not in sequence.step_ids:
                    invalid(
                        [
                            {
                                "pointer": "/startStepId",
                                "detail": f"step {parsed.start_step_id} is not in sequence {sequence.id}",
                            }
                        ]
                    )
                if self.observed:
                    self._whole_request_refusals(sequence, user_id, parsed.contact_ids)
                added, not_processed = self.data.bulk_add(sequence, user_id, parsed)
            return json_response({"added": added, "notProcessed": not_processed})

        @app.post("/v3/sequences/{sequence_id}/contact-links/bulk-delete")
        async def bulk_delete(sequence_id: str, request: Request) -> dict[str, Any]:
            user_id = self._authorize(request, "sequences:operate")
            body = await json_body(request)
            if isinstance(body.get("contactIds"), list):
                request.state.items = len(body["contactIds"])
            errors: list[dict[str, str]] = []
            ids = int_list(body, "contactIds", errors, self.max_bulk_ids)
            if errors:
                invalid(errors)
            with self.lock:
                return self.data.bulk_delete(self._sequence(sequence_id, user_id), user_id, ids)

    def _add_contact_routes(self, app: FastAPI) -> None:
        @app.post("/v3/contacts/import")
        async def import_contacts(request: Request) -> Any:
            user_id = self._authorize(request, "contacts:write")
            body = await json_body(request)
            return self._import(request, user_id, body)

        @app.get("/v3/background-jobs/{job_id}")
        async def background_job(job_id: str, request: Request) -> dict[str, Any]:
            user_id = self._authorize(request, None)
            with self.lock:
                job = self.data.jobs.get(job_id)
                if job is None or job.owner_user_id != user_id:
                    raise ProblemError(404, f"background job {job_id} was not found", "job.notFound")
                return job.to_api(observed=self.observed)

        @app.get("/v3/contacts")
        async def find_contacts(request: Request) -> dict[str, Any]:
            user_id = self._authorize(request, "contacts:read")
            email = request.query_params.get("email")
            if not email:
                invalid([{"parameter": "email", "detail": "email is required"}])
            with self.lock:
                contact = self.data.find_contact(email, user_id)
                return {"items": [contact.to_api()] if contact is not None else []}

    def _whole_request_refusals(self, sequence: Sequence, user_id: int, contact_ids: list[int]) -> None:
        """Observed: what Reply refuses for the whole bulk add, not per contact."""
        if not sequence.step_ids:
            raise ProblemError(
                400, f"sequence {sequence.id} has no steps", "sequenceContact.noStepsInSequence"
            )
        if self.data.exceeds_contact_limit(contact_ids, sequence.id, user_id):
            raise ProblemError(
                400,
                f"the plan allows {self.data.contact_limit} contacts in sequences",
                "sequenceContact.contactLimitExceeded",
            )

    def _import(self, request: Request, user_id: int, body: dict[str, Any]) -> Any:
        items = body.get("items")
        if not isinstance(items, list) or not items:
            invalid([{"pointer": "/items", "detail": "items is required: a non-empty array of contacts"}])
        request.state.items = len(items)
        if len(items) > self.max_import_items:
            invalid(
                [
                    {
                        "pointer": "/items",
                        "detail": f"at most {self.max_import_items} items per call, got {len(items)}",
                    }
                ]
            )
        options: dict[str, Any] = body["options"] if body.get("options") is not None else {}
        # Items that are plainly well-typed and short enough skip the checks that would word
        # their errors (the usual case); any other body gets every check.
        plain = plain_items(items)
        errors = check_import_schema(items, options, check_items=not plain)
        if errors:
            invalid(errors)
        if self.observed:
            # Reply's CLI: firstName is required on every item, even for a known email.
            no_name = [
                {"pointer": f"/items/{i}/firstName", "detail": "firstName is required"}
                for i, item in enumerate(items)
                if not (isinstance(item.get("firstName"), str) and item["firstName"].strip())
            ]
            if no_name:
                invalid(no_name, f"{len(no_name)} item(s) have no firstName; nothing was imported")
        email_errors = [email_error(item.get("email")) for item in items]
        bad = [{"pointer": f"/items/{i}/email", "detail": e} for i, e in enumerate(email_errors) if e]
        if bad and self.import_rejects_whole_batch_on_invalid_email:
            invalid(bad, f"{len(bad)} item(s) have an invalid email; nothing was imported")
        if plain:
            item_errors = [e or None for e in email_errors]
        else:
            item_errors = [e or length_error(item) for e, item in zip(email_errors, items, strict=True)]
        with self.lock:
            result = self.data.import_contacts(user_id, items, item_errors, options)
            if self.import_async_threshold is None or len(items) <= self.import_async_threshold:
                return json_response(result)
            job = self.data.add_job(user_id, result, self.job_delay)
        return JSONResponse(
            {"jobId": job.id, "status": "Scheduled"},
            status_code=202,
            headers={"Location": f"/v3/background-jobs/{job.id}"},
        )

    @staticmethod
    def _add_error_handlers(app: FastAPI) -> None:
        # FastAPI's own {"detail": ...} answers must never escape: everything is a problem.
        @app.exception_handler(ProblemError)
        async def on_problem(request: Request, exc: ProblemError) -> Response:
            return problem_response(exc)

        @app.exception_handler(Unauthorized)
        async def on_unauthorized(request: Request, exc: Unauthorized) -> Response:
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})

        @app.exception_handler(StarletteHTTPException)
        async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
            code = {404: "route.notFound", 405: "method.notAllowed"}.get(exc.status_code)
            detail = f"{request.method} {request.url.path}: {exc.detail}"
            return problem_response(
                ProblemError(exc.status_code, detail, code, headers=dict(exc.headers or {}))
            )

        @app.exception_handler(RequestValidationError)
        async def on_validation(request: Request, exc: RequestValidationError) -> Response:
            errors = [
                {"pointer": "/" + "/".join(str(p) for p in e.get("loc", ())[1:]), "detail": str(e.get("msg"))}
                for e in exc.errors()
            ]
            return problem_response(
                ProblemError(400, "the request is not valid", "validation.failed", errors)
            )

        @app.exception_handler(Exception)
        async def on_error(request: Request, exc: Exception) -> Response:
            return problem_response(ProblemError(500, "an unexpected error occurred", "server.error"))


_SETTINGS: dict[str, Any] = {
    "emailsCountPerDay": 50,
    "daysToFinishProspect": 14,
    "emailSendingDelaySeconds": 30,
    "dailyThrottling": 200,
    "disableOpensTracking": False,
    "repliesHandlingType": "markAsFinished",
    "enableLinksTracking": True,
}
