"""A simulator of Whippy's public API (``/v1``), as strict as ``shared/api/whippy.md`` describes it.

Assumptions beyond the documented contract, each chosen to be safe for a client:

- Validation errors answer **422** with ``{"errors": [{"description", "field"}], "status": 422}``,
  as a Phoenix API validating with OpenApiSpex does; a body that is not JSON answers 400.
- The body of the ``202 Accepted`` for created sequence contacts is undocumented; this answers
  ``{"data": {"status": "accepted"}}`` and clients must not rely on it.
- Body validation runs before the sequence lookup, so a bad body to an unknown sequence is a 422.
- With ``custom_data``, every key of a ``to`` item's ``properties`` must be a property of the
  custom object (the docs: the object and its properties must exist first).
- ``schedule_at`` needs a date and a time; without an offset it is read as UTC.
- Conversations are not modelled.

With ``behaviour="observed"`` it answers as Whippy's own code shows the live service does, where
that departs from the reference or where the reference is silent (``shared/api/whippy.md``,
"What Whippy's own code shows", 2026-12), taking the harder case where the evidence leaves a
choice:

- a step contact's ``contact`` is ``{id, name, email, phone}``, without ``external_id``;
- error bodies are ``{"errors": [{"description"}], "status"}``: a 422 names no item of ``to``
  (nor any other field);
- the step-contact lists refuse a ``limit`` above 100 with a 422 (a Whippy-written client
  says 1 to 100; 500 is documented only for another list);
- channels carry no ``email`` and their list no ``total``;
- a sequence's steps carry no ``position`` and no ``channel_type``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_sequences.testing.base import DEFAULT_BEHAVIOUR, Behaviour, Simulator, json_response
from airflow_provider_sequences.testing.faults import CannedResponse
from airflow_provider_sequences.testing.ratelimit import Limit
from airflow_provider_sequences.testing.whippy_data import WhippyData
from airflow_provider_sequences.testing.whippy_records import (
    EnrolJob,
    SequenceRecord,
    StepContact,
)
from airflow_provider_sequences.testing.whippy_requests import (
    OBSERVED_STEP_CONTACT_LIMIT,
    RATE_LIMIT_HEADER,
    Error,
    WhippyError,
    error,
    error_body,
    http_error,
    int_param,
    org,
    parse_create_body,
    rate_limit_tier,
    rate_limited,
    validation_error,
    whippy_error,
)


class WhippySimulator(WhippyData, Simulator):
    """Whippy's API over in-memory state, served on loopback for tests.

    Arrange data with the Python API (:class:`WhippyData`: ``add_api_key``, ``add_channel``,
    ``add_sequence``, ``add_custom_object``, ``add_contact``), then inspect the ground truth
    (``enrolments``, ``step_contacts``, ``upload_tags``, ``ignored``, ``requests``) after
    ``wait_idle()``.

    :param time_scale: simulated seconds per real second for the rate limits.
    :param enforce_rate_limits: answer 429 over 10 writes a minute (time-consuming tier) or
        25 requests a second (standard tier), per API key.
    :param processing_delay: real seconds between a 202 and its background job running; jobs
        run one at a time, in the order they were accepted.
    :param max_list_limit: the largest ``limit`` a list accepts.
    :param behaviour: ``documented`` (the reference) or ``observed`` (what Whippy's own code
        shows: see the module's docstring).
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        enforce_rate_limits: bool = True,
        processing_delay: float = 0.0,
        max_list_limit: int = 500,
        behaviour: Behaviour = DEFAULT_BEHAVIOUR,
    ) -> None:
        self.processing_delay = processing_delay
        self.max_list_limit = max_list_limit
        self._init_data()
        super().__init__(time_scale=time_scale, enforce_rate_limits=enforce_rate_limits, behaviour=behaviour)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> WhippySimulator:
        """Serve on loopback in a background thread; ``port=0`` picks a free port."""
        super().start(host, port)
        return self

    def __enter__(self) -> WhippySimulator:
        return self.start()

    # -- canned answers for the fault injector ------------------------------------------------

    def rate_limited_response(self, wait_seconds: float) -> CannedResponse:
        milliseconds, body = rate_limited(wait_seconds)
        headers = [
            (b"content-type", b"application/json"),
            (RATE_LIMIT_HEADER.lower().encode(), milliseconds.encode()),
        ]
        return 429, headers, json.dumps(body).encode()

    def server_error_response(self) -> CannedResponse:
        body = error_body(500, [error("Internal server error")])
        return 500, [(b"content-type", b"application/json")], json.dumps(body).encode()

    # -- the app ------------------------------------------------------------------------------

    def build_app(self) -> FastAPI:
        app = FastAPI(title="Whippy simulator", openapi_url=None, docs_url=None, redoc_url=None)
        app.state.observed = self.observed
        app.add_exception_handler(WhippyError, whippy_error)
        app.add_exception_handler(RequestValidationError, validation_error)
        app.add_exception_handler(StarletteHTTPException, http_error)
        app.middleware("http")(self._gate)
        router = APIRouter(prefix="/v1")
        router.add_api_route("/sequences", self._list_sequences, methods=["GET"])
        router.add_api_route("/sequences/{sequence_id}", self._get_sequence, methods=["GET"])
        router.add_api_route(
            "/sequences/{sequence_id}/contacts", self._create_sequence_contacts, methods=["POST"]
        )
        router.add_api_route("/sequences/{sequence_id}/contacts", self._list_step_contacts, methods=["GET"])
        router.add_api_route("/contacts/{contact_id}/sequences", self._contact_sequences, methods=["POST"])
        router.add_api_route("/channels", self._list_channels, methods=["GET"])
        app.include_router(router)
        return app

    async def _gate(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Authenticate, then apply the rate limit of the request's tier."""
        key = request.headers.get("x-whippy-key")
        # A plain dict read (atomic) rather than self.lock: a long job must not stall the loop.
        organization = self._keys.get(key) if key else None
        if key is None or organization is None:
            return JSONResponse(error_body(401, [error("Not authenticated")]), status_code=401)
        request.state.organization_id = organization
        if self.enforce_rate_limits:
            tier = rate_limit_tier(request.method, request.url.path)
            limits = [Limit(10, 60)] if tier == "time_consuming" else [Limit(25, 1)]
            wait = self.limiter.hit(key, tier, limits)
            if wait > 0:
                milliseconds, body = rate_limited(wait)
                return JSONResponse(body, status_code=429, headers={RATE_LIMIT_HEADER: milliseconds})
        return await call_next(request)

    def _page(self, params: Mapping[str, Any], *, step_contacts: bool = False) -> tuple[int, int]:
        errors: list[Error] = []
        high = self.max_list_limit
        if step_contacts and self.observed:
            high = min(high, OBSERVED_STEP_CONTACT_LIMIT)
        limit = int_param(params, "limit", 50, 1, high, errors)
        offset = int_param(params, "offset", 0, 0, None, errors)
        if errors:
            raise WhippyError(422, errors)
        return limit, offset

    def _list_sequences(self, request: Request) -> dict[str, Any]:
        limit, offset = self._page(request.query_params)
        title = (request.query_params.get("title") or "").lower()
        with self.lock:
            found = [s for s in self.list_sequences(org(request)) if title in s.title.lower()]
            page = [s.to_api(observed=self.observed) for s in found[offset : offset + limit]]
            return {"data": page, "total": len(found)}

    def _get_sequence(self, sequence_id: str, request: Request) -> dict[str, Any]:
        with self.lock:
            return {"data": self._sequence_or_404(org(request), sequence_id).to_api(observed=self.observed)}

    def _list_channels(self, request: Request) -> dict[str, Any]:
        limit, offset = self._page(request.query_params)
        with self.lock:
            channels = self.list_channels(org(request))
            page = [c.to_api(observed=self.observed) for c in channels[offset : offset + limit]]
            return {"data": page} if self.observed else {"data": page, "total": len(channels)}

    def _list_step_contacts(self, sequence_id: str, request: Request) -> Response:
        params = request.query_params
        limit, offset = self._page(params, step_contacts=True)
        status = params.get("status")
        step_ids = frozenset(
            s.strip() for value in params.getlist("step_ids") for s in value.split(",") if s.strip()
        )
        with self.lock:
            sequence = self._sequence_or_404(org(request), sequence_id)
            records = self.filtered_step_contacts(sequence.id, step_ids, status)
            page = self._step_contact_page(records, limit, offset)
        # The same JSON FastAPI makes of the dict, without its encoder's walk over every value
        # (plain strings and None already): a read-back lists a million step contacts.
        return json_response(page)

    def _contact_sequences(
        self, contact_id: str, request: Request, payload: Annotated[Any, Body()] = None
    ) -> dict[str, Any]:
        payload = {} if payload is None else payload
        if not isinstance(payload, dict):
            raise WhippyError(422, [error("the body must be a JSON object")])
        limit, offset = self._page(payload, step_contacts=True)
        sequence_id = payload.get("sequence_id")
        if sequence_id is not None and not isinstance(sequence_id, str):
            raise WhippyError(422, [error("must be a string", "sequence_id")])
        with self.lock:
            contact = self.find_contact(org(request), contact_id)
            if contact is None:
                raise WhippyError(404, [error("Contact not found")])
            records = [
                r
                for r in self.contact_step_contacts(contact.id)
                if sequence_id is None or r.sequence_id == sequence_id
            ]
            return self._step_contact_page(records, limit, offset)

    def _step_contact_page(self, records: list[StepContact], limit: int, offset: int) -> dict[str, Any]:
        page = records[offset : offset + limit]
        return {"data": [self.step_contact_to_api(r) for r in page], "total": len(records)}

    def _sequence_or_404(self, organization_id: str, sequence_id: str) -> SequenceRecord:
        sequence = self.find_sequence(organization_id, sequence_id)
        if sequence is None:
            raise WhippyError(404, [error("Sequence not found")])
        return sequence

    def _create_sequence_contacts(
        self, sequence_id: str, request: Request, payload: Annotated[Any, Body()] = None
    ) -> JSONResponse:
        """Validate, answer 202 and leave the work to the background job, as Whippy does."""
        if not isinstance(payload, dict):
            raise WhippyError(422, [error("the body must be a JSON object")])
        if isinstance(payload.get("to"), list):
            request.state.items = len(payload["to"])
        organization = org(request)
        job = parse_create_body(organization, sequence_id, payload)
        with self.lock:
            sequence = self._sequence_or_404(organization, sequence_id)
            if sequence.status == "draft":
                raise WhippyError(422, [error("sequence is a draft and accepts no contacts")])
            errors = self._check_references(job, sequence)
            if errors:
                raise WhippyError(422, errors)
            job.step_id = job.step_id or sequence.steps[0].id
        self.enqueue(job)
        # The real 202 body is undocumented: this one is a placeholder clients must not rely on.
        return JSONResponse({"data": {"status": "accepted"}}, status_code=202)

    def _check_references(self, job: EnrolJob, sequence: SequenceRecord) -> list[Error]:
        """Errors for references the body makes to things that must exist (caller holds the lock)."""
        errors: list[Error] = []
        if job.from_ is not None and not any(
            job.from_ in (channel.phone, channel.email) for channel in self.list_channels(job.organization_id)
        ):
            errors.append(error("must be the phone or email of a channel of the organization", "from"))
        if job.step_id and job.step_id not in {step.id for step in sequence.steps}:
            errors.append(error("is not a step of this sequence", "step_id"))
        if job.custom_data is not None:
            custom_object = self.find_custom_object(job.organization_id, job.custom_data["custom_object_id"])
            if custom_object is None:
                errors.append(error("custom object not found", "custom_data.custom_object_id"))
            else:
                for at, item in enumerate(job.items):
                    for key in item.get("properties") or {}:
                        if key not in custom_object.properties:
                            description = f"is not a property of custom object {custom_object.key!r}"
                            errors.append(error(description, f"to[{at}].properties.{key}"))
        return errors
