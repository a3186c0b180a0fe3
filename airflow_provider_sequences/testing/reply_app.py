"""The Reply.io simulator's HTTP API: authentication and acting users, the routes, and the
import's checks (the requests' parsing is :mod:`.reply_requests`, the data :mod:`.reply_data`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_sequences.testing.base import (
    Simulator,
    json_response,
)
from airflow_provider_sequences.testing.ratelimit import Limit
from airflow_provider_sequences.testing.reply_data import ReplyData
from airflow_provider_sequences.testing.reply_records import (
    OBSERVED_MAX_PAGE,
    SEQUENCE_STATUSES,
    ApiKey,
    Sequence,
)
from airflow_provider_sequences.testing.reply_requests import (
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
    problem_response,
    retry_after,
)

#: Per acting user, shared by every key acting for them.
RATE_LIMITS = [Limit(100, 60), Limit(3000, 3600)]


def rate_limit_identity(user_id: int) -> str:
    """The limiter identity of a user (tests may pre-fill ``sim.limiter`` with it)."""
    return f"user:{user_id}"


class ReplyApi(Simulator):
    """The routes of :class:`~airflow_provider_sequences.testing.reply.ReplySimulator`, which
    holds the account's data and the settings declared here."""

    data: ReplyData
    max_bulk_ids: int
    max_import_items: int
    import_rejects_whole_batch_on_invalid_email: bool
    import_async_threshold: int | None
    job_delay: float

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
