"""The Whippy simulator's requests: limits and checks of a create-sequence-contacts body, query
parameters, and error answers as Whippy shapes them."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from airflow_provider_sequences.testing.whippy_records import (
    CONTACT_FIELDS,
    EnrolJob,
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


def org(request: Request) -> str:
    organization: str = request.state.organization_id
    return organization


def rate_limited(wait_seconds: float) -> tuple[str, dict[str, Any]]:
    """The wait header's value (whole milliseconds, at least 1) and the 429 body."""
    milliseconds = max(1, math.ceil(wait_seconds * 1000))
    return str(milliseconds), error_body(429, [error(f"Too many requests: retry in {milliseconds} ms")])


def int_param(
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


def parse_create_body(organization_id: str, sequence_id: str, payload: dict[str, Any]) -> EnrolJob:
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


async def whippy_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WhippyError)
    return _answer(request, exc.status, exc.errors)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if any(detail.get("type") == "json_invalid" for detail in exc.errors()):
        return JSONResponse(error_body(400, [error("malformed JSON body")]), status_code=400)
    errors = [
        error(str(detail["msg"]), ".".join(str(part) for part in detail["loc"][1:]) or None)
        for detail in exc.errors()
    ]
    return _answer(request, 422, errors)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = error_body(exc.status_code, [error(str(exc.detail))])
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
