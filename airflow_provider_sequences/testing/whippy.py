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
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
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
    CONTACT_FIELDS,
    EnrolJob,
    SequenceRecord,
    StepContact,
    utc_now,
)

Error = dict[str, Any]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TIME_CONSUMING_PREFIXES = ("/v1/sequences", "/v1/campaigns", "/v1/contacts/lists")
RATE_LIMIT_HEADER = "X-RateLimit-Remaining-Interval-Milliseconds"
MAX_CONTACTS = 4000
MAX_TEXT = 255
ADDRESS_FIELDS = ("address_line_one", "address_line_two", "city", "state", "country", "post_code")
BIRTH_DATE_FIELDS = ("day", "month", "year")
RESOURCES = ("contact", "step_contact")
DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
#: The largest ``limit`` of a step-contact list in the observed behaviour.
OBSERVED_STEP_CONTACT_LIMIT = 100


class WhippyError(Exception):
    """An error answer in Whippy's shape."""

    def __init__(self, status: int, errors: list[Error]) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors


def error(description: str, field: str | None = None) -> Error:
    return {"description": description} if field is None else {"description": description, "field": field}


def error_body(status: int, errors: list[Error]) -> dict[str, Any]:
    return {"errors": errors, "status": status}


def rate_limit_tier(method: str, path: str) -> str:
    """The documented tier of a request: writes under the slow prefixes, or standard."""
    slow = any(path == prefix or path.startswith(prefix + "/") for prefix in TIME_CONSUMING_PREFIXES)
    return "time_consuming" if slow and method.upper() in WRITE_METHODS else "standard"


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
        milliseconds, body = _rate_limited(wait_seconds)
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
        app.add_exception_handler(WhippyError, _whippy_error)
        app.add_exception_handler(RequestValidationError, _validation_error)
        app.add_exception_handler(StarletteHTTPException, _http_error)
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
                milliseconds, body = _rate_limited(wait)
                return JSONResponse(body, status_code=429, headers={RATE_LIMIT_HEADER: milliseconds})
        return await call_next(request)

    def _page(self, params: Mapping[str, Any], *, step_contacts: bool = False) -> tuple[int, int]:
        errors: list[Error] = []
        high = self.max_list_limit
        if step_contacts and self.observed:
            high = min(high, OBSERVED_STEP_CONTACT_LIMIT)
        limit = _int_param(params, "limit", 50, 1, high, errors)
        offset = _int_param(params, "offset", 0, 0, None, errors)
        if errors:
            raise WhippyError(422, errors)
        return limit, offset

    def _list_sequences(self, request: Request) -> dict[str, Any]:
        limit, offset = self._page(request.query_params)
        title = (request.query_params.get("title") or "").lower()
        with self.lock:
            found = [s for s in self.list_sequences(_org(request)) if title in s.title.lower()]
            page = [s.to_api(observed=self.observed) for s in found[offset : offset + limit]]
            return {"data": page, "total": len(found)}

    def _get_sequence(self, sequence_id: str, request: Request) -> dict[str, Any]:
        with self.lock:
            return {"data": self._sequence_or_404(_org(request), sequence_id).to_api(observed=self.observed)}

    def _list_channels(self, request: Request) -> dict[str, Any]:
        limit, offset = self._page(request.query_params)
        with self.lock:
            channels = self.list_channels(_org(request))
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
            sequence = self._sequence_or_404(_org(request), sequence_id)
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
            contact = self.find_contact(_org(request), contact_id)
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
        organization = _org(request)
        job = _parse_create_body(organization, sequence_id, payload)
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


def _org(request: Request) -> str:
    organization: str = request.state.organization_id
    return organization


def _rate_limited(wait_seconds: float) -> tuple[str, dict[str, Any]]:
    """The wait header's value (whole milliseconds, at least 1) and the 429 body."""
    milliseconds = max(1, math.ceil(wait_seconds * 1000))
    return str(milliseconds), error_body(429, [error(f"Too many requests: retry in {milliseconds} ms")])


def _int_param(
    params: Mapping[str, Any], name: str, default: int, low: int, high: int | None, errors: list[Error]
) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if isinstance(raw, str) and re.fullmatch(r"-?\d+", raw.strip()):
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < low or (high is not None and raw > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        errors.append(error(f"must be an integer {bounds}", name))
        return default
    return raw


def _check_text(value: Any, field: str, errors: list[Error], *, max_length: int | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        errors.append(error("must be a string", field))
    elif max_length is not None and len(value) > max_length:
        errors.append(error(f"should be at most {max_length} character(s)", field))


def _check_object(value: Any, field: str, errors: list[Error], fields: dict[str, type] | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        errors.append(error("must be an object", field))
        return
    for name, kind in (fields or {}).items():
        inner = value.get(name)
        if inner is not None and (not isinstance(inner, kind) or isinstance(inner, bool)):
            errors.append(error(f"must be {'an integer' if kind is int else 'a string'}", f"{field}.{name}"))


def _parse_item(item: Any, field: str, errors: list[Error]) -> dict[str, Any]:
    if not isinstance(item, dict):
        errors.append(error("must be an object", field))
        return {}
    phone = item.get("phone")
    if phone is None or phone == "":
        errors.append(error("can't be blank", f"{field}.phone"))
    _check_text(phone, f"{field}.phone", errors)
    for name in ("email", "name"):
        _check_text(item.get(name), f"{field}.{name}", errors, max_length=MAX_TEXT)
    for name in ("external_id", "language"):
        _check_text(item.get(name), f"{field}.{name}", errors)
    channel_id = item.get("default_channel_id")
    if channel_id is not None and not _is_uuid(channel_id):
        errors.append(error("must be a UUID", f"{field}.default_channel_id"))
    _check_object(item.get("address"), f"{field}.address", errors, dict.fromkeys(ADDRESS_FIELDS, str))
    _check_object(
        item.get("birth_date"), f"{field}.birth_date", errors, dict.fromkeys(BIRTH_DATE_FIELDS, int)
    )
    _check_object(item.get("properties"), f"{field}.properties", errors)
    return {name: item[name] for name in (*CONTACT_FIELDS, "properties") if item.get(name) is not None}


def _parse_create_body(organization_id: str, sequence_id: str, payload: dict[str, Any]) -> EnrolJob:
    """The body of ``POST /v1/sequences/{id}/contacts`` as a job, or a 422 with every error found."""
    errors: list[Error] = []
    to = payload.get("to")
    items: list[dict[str, Any]] = []
    if not isinstance(to, list) or not 1 <= len(to) <= MAX_CONTACTS:
        errors.append(error(f"must be a list of 1 to {MAX_CONTACTS} contacts", "to"))
    else:
        items = [_parse_item(item, f"to[{at}]", errors) for at, item in enumerate(to)]
    for name in ("from", "step_id"):
        _check_text(payload.get(name), name, errors)
    schedule_at = None
    if payload.get("schedule_at") is not None:
        schedule_at = _parse_date_time(payload["schedule_at"])
        if schedule_at is None:
            errors.append(error("must be an ISO 8601 date-time", "schedule_at"))
    custom_data = payload.get("custom_data")
    _check_object(custom_data, "custom_data", errors)
    if isinstance(custom_data, dict):
        object_id = custom_data.get("custom_object_id")
        if not isinstance(object_id, str) or not object_id:
            errors.append(error("can't be blank", "custom_data.custom_object_id"))
        if custom_data.get("resource") not in RESOURCES:
            errors.append(error("must be one of: contact, step_contact", "custom_data.resource"))
    _check_object(payload.get("voice_options"), "voice_options", errors)
    if errors:
        raise WhippyError(422, errors)
    return EnrolJob(
        organization_id=organization_id,
        sequence_id=sequence_id,
        step_id=payload.get("step_id") or "",
        items=items,
        requested_at=utc_now(),
        schedule_at=schedule_at,
        from_=payload.get("from"),
        custom_data=dict(custom_data) if isinstance(custom_data, dict) else None,
        voice_options=payload.get("voice_options"),
    )


def _parse_date_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not DATE_TIME.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return isinstance(value, str)


def _answer(request: Request, status: int, errors: list[Error]) -> JSONResponse:
    if request.app.state.observed:
        # Only the documented shape: the description, never which field or item it is about.
        errors = [{"description": e["description"]} for e in errors]
    return JSONResponse(error_body(status, errors), status_code=status)


async def _whippy_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WhippyError)
    return _answer(request, exc.status, exc.errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if any(detail.get("type") == "json_invalid" for detail in exc.errors()):
        return JSONResponse(error_body(400, [error("malformed JSON body")]), status_code=400)
    errors = [
        error(str(detail["msg"]), ".".join(str(part) for part in detail["loc"][1:]) or None)
        for detail in exc.errors()
    ]
    return _answer(request, 422, errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = error_body(exc.status_code, [error(str(exc.detail))])
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
