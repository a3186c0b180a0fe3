"""Reply.io simulator requests: problem+json answers and parsing/validation of bodies and queries.

Every rejection raises :class:`ProblemError` (or :class:`Unauthorized`), which the app in
:mod:`airflow_provider_sequences.testing.reply` turns into the answer Reply gives.
"""

from __future__ import annotations

import functools
import json
import math
import re
from datetime import datetime, timezone
from typing import Any, NoReturn

import email_validator
import msgspec
from email_validator import EmailNotValidError, validate_email
from fastapi import Request
from fastapi.responses import JSONResponse

from airflow_provider_sequences.testing.reply_records import CONTACT_FIELDS, BulkAdd

MAX_STRING = 255
PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """Ends a request with an RFC 9457 problem."""

    def __init__(
        self,
        status: int,
        detail: str,
        code: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code, self.errors, self.headers = status, detail, code, errors, headers


class Unauthorized(Exception):
    """Ends a request with the bare 401 Reply answers."""


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


def problem_body(status: int, detail: str, code: str | None = None, errors: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://api.reply.io/problems/{code}" if code else "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if code:
        body["code"] = code
    if errors:
        body["errors"] = errors
    return body


def problem_response(problem: ProblemError) -> JSONResponse:
    return JSONResponse(
        problem_body(problem.status, problem.detail, problem.code, problem.errors),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_JSON,
    )


def invalid(errors: list[dict[str, str]], detail: str = "the request is not valid") -> NoReturn:
    raise ProblemError(400, detail, "validation.failed", errors)


def retry_after(wait_seconds: float) -> str:
    return str(max(1, math.ceil(wait_seconds)))


# -- request parsing --------------------------------------------------------------------------


def _int_query(request: Request, name: str, default: int, low: int, high: int | None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        invalid([{"parameter": name, "detail": f"{name} must be an integer {bounds}, got {raw!r}"}])
    return value


def path_id(raw: str, name: str = "id") -> int:
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        invalid([{"parameter": name, "detail": f"{name} must be a positive integer, got {raw!r}"}])
    return int(raw)


def page(items: list[dict[str, Any]], request: Request, *, max_items: int | None = None) -> dict[str, Any]:
    """One ``top``/``skip`` page; ``max_items`` caps a page silently, whatever ``top`` asked."""
    top = _int_query(request, "top", 25, 1, 1000)
    skip = _int_query(request, "skip", 0, 0, None)
    if max_items is not None:
        top = min(top, max_items)
    return {"items": items[skip : skip + top], "hasMore": skip + top < len(items)}


async def json_body(request: Request) -> dict[str, Any]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise ProblemError(415, "the body must be application/json", "request.unsupportedMediaType")
    try:
        # msgspec (an Airflow core dependency) parses a 1,000-contact import about twice as
        # fast as json, and is as strict: it also refuses NaN and Infinity, which are not JSON.
        body = msgspec.json.decode(await request.body())
    except ValueError as exc:
        raise ProblemError(400, f"the body is not valid JSON: {exc}", "request.invalidJson") from exc
    if not isinstance(body, dict):
        invalid([{"pointer": "", "detail": "the body must be a JSON object"}])
    return body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not an id


def int_list(body: dict[str, Any], name: str, errors: list[dict[str, str]], limit: int) -> list[int]:
    """A required, non-empty array of at most ``limit`` integers; one error per bad element."""
    values = body.get(name)
    if name not in body or not isinstance(values, list):
        errors.append({"pointer": f"/{name}", "detail": f"{name} is required: an array of integers"})
        return []
    if not values:
        errors.append({"pointer": f"/{name}", "detail": f"{name} must not be empty"})
    elif len(values) > limit:
        errors.append({"pointer": f"/{name}", "detail": f"at most {limit} ids per call, got {len(values)}"})
    if set(map(type, values)) <= {int}:  # the usual case, checked at C speed
        return list(values)
    for index, value in enumerate(values):
        if not _is_int(value):
            errors.append(
                {"pointer": f"/{name}/{index}", "detail": f"must be an integer, got {json.dumps(value)}"}
            )
    return [v for v in values if _is_int(v)]


def _bool(body: dict[str, Any], name: str, errors: list[dict[str, str]], prefix: str = "") -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        errors.append(
            {"pointer": f"{prefix}/{name}", "detail": f"must be a boolean, got {json.dumps(value)}"}
        )
        return False
    return value


def _start_from(value: Any, errors: list[dict[str, str]]) -> str | None:
    if value is None:
        return None
    parsed = None
    if isinstance(value, str):
        try:
            # Python 3.10's fromisoformat does not read "Z".
            parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
        except ValueError:
            parsed = None
    if parsed is None or parsed.tzinfo is None:
        errors.append(
            {
                "pointer": "/startFrom",
                "detail": f"must be an RFC 3339 date-time with an offset, got {json.dumps(value)}",
            }
        )
        return None
    now = datetime.now(timezone.utc)
    if parsed < now:
        errors.append(
            {
                "pointer": "/startFrom",
                "detail": f"startFrom {value} is in the past (now is {now.isoformat(timespec='seconds')})",
            }
        )
        return None
    return parsed.isoformat()


def parse_bulk_add(body: dict[str, Any], max_ids: int) -> BulkAdd:
    errors: list[dict[str, str]] = []
    ids = int_list(body, "contactIds", errors, max_ids)
    remove = _bool(body, "removeFromExisting", errors)
    ignore_delay = _bool(body, "ignoreStepDelay", errors)
    start_step = body.get("startStepId")
    if start_step is not None and not _is_int(start_step):
        errors.append(
            {"pointer": "/startStepId", "detail": f"must be an integer or null, got {json.dumps(start_step)}"}
        )
        start_step = None
    start_from = _start_from(body.get("startFrom"), errors)
    if errors:
        invalid(errors)
    return BulkAdd(ids, remove, start_step, ignore_delay, start_from)


def plain_items(items: list[Any]) -> bool:
    """True if no item has a type error or an over-long value: a quick proof, item by item.

    When it holds, :func:`check_import_schema` finds nothing in the items and
    :func:`length_error` nothing in any item, so both may skip them; when it does not, they
    find and word every error themselves. It only accepts the exact JSON types, so it is never
    more lenient than they are.
    """
    for item in items:
        if type(item) is not dict:
            return False
        # Every member, not only the contact fields: one pass over what the item holds (a
        # member outside them that is not short text only sends the item to the full checks).
        for name, value in item.items():
            if type(value) is str:
                if len(value) > MAX_STRING:
                    return False
            elif value is not None and name != "customFields":
                return False
        customs = item.get("customFields")
        if customs is not None and not _plain_customs(customs):
            return False
    return True


def _plain_customs(customs: Any) -> bool:
    """:func:`plain_items` for one item's ``customFields``."""
    if type(customs) is not list:
        return False
    for custom in customs:
        if type(custom) is not dict or not (type(custom.get("name")) is str or _is_int(custom.get("id"))):
            return False
        value = custom.get("value")
        if type(value) is str:
            if len(value) > MAX_STRING:
                return False
        elif value is not None and type(value) not in (int, float, bool):
            return False
    return True


def check_import_schema(items: list[Any], options: Any, *, check_items: bool = True) -> list[dict[str, str]]:
    """Type errors anywhere in an import body (each one a 400, as model binding fails).

    ``check_items=False`` checks only the options (for items :func:`plain_items` passed).
    """
    errors: list[dict[str, str]] = []
    for index, item in enumerate(items if check_items else ()):
        where = f"/items/{index}"
        if not isinstance(item, dict):
            errors.append({"pointer": where, "detail": "must be a contact object"})
            continue
        for name in CONTACT_FIELDS:
            if item.get(name) is not None and not isinstance(item[name], str):
                errors.append({"pointer": f"{where}/{name}", "detail": "must be a string or null"})
        customs = item.get("customFields")
        if customs is not None and not isinstance(customs, list):
            errors.append({"pointer": f"{where}/customFields", "detail": "must be an array"})
            continue
        for n, custom in enumerate(customs or []):
            ok = (
                isinstance(custom, dict)
                and (isinstance(custom.get("name"), str) or _is_int(custom.get("id")))
                and isinstance(custom.get("value"), (str, int, float, bool, type(None)))
            )
            if not ok:
                errors.append(
                    {"pointer": f"{where}/customFields/{n}", "detail": 'must be {"name" or "id", "value"}'}
                )
    if not isinstance(options, dict):
        return [*errors, {"pointer": "/options", "detail": "must be an object"}]
    for name in ("overwriteExisting", "skipExisting", "detectTimeZone"):
        _bool(options, name, errors, "/options")
    list_ids = options.get("listIds")
    if list_ids is not None and not (isinstance(list_ids, list) and all(_is_int(i) for i in list_ids)):
        errors.append({"pointer": "/options/listIds", "detail": "must be an array of integers"})
    if options.get("overwriteExisting") is True and options.get("skipExisting") is True:
        errors.append(
            {"pointer": "/options/skipExisting", "detail": "cannot be combined with overwriteExisting"}
        )
    return errors


# A plain ASCII address that email-validator is sure to accept, whatever its settings: a
# dot-atom local part of at most 64 characters, then at least two hostname labels of at most
# 63 characters without "--" (no Punycode, no R-LDH label) ending in an alphabetic top-level
# domain, at most 254 characters in all and no special-use domain. Anything else, which is
# rare in real data, goes through email-validator itself. Checking ~1,000 emails a request
# with email-validator alone cost ~40 ms; this check costs ~1 us each.
_ATEXT = r"A-Za-z0-9_!#$%&'*+\-/=?^`{|}~"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_EMAIL = re.compile(
    rf"(?P<local>[{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@(?P<domain>(?:{_LABEL}\.)+[A-Za-z]{{2,63}})"
)


@functools.lru_cache(maxsize=8)
def _special_use_suffixes(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple("." + name.lower() for name in names)


def _surely_valid(email: str) -> bool:
    """True only for addresses ``validate_email`` accepts (the converse need not hold)."""
    if len(email) > 254:
        return False
    match = _PLAIN_EMAIL.fullmatch(email)
    if match is None or len(match["local"]) > 64 or "--" in match["domain"]:
        return False
    # Read at each call, as email-validator does: a test may extend the list.
    suffixes = _special_use_suffixes(tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES))
    return not ("." + match["domain"].lower()).endswith(suffixes)


def email_error(email: Any) -> str | None:
    if not email:
        return "email is required"
    if isinstance(email, str) and _surely_valid(email):
        return None
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        return f"invalid email {email!r}: {exc}"
    return None


def length_error(item: dict[str, Any]) -> str | None:
    for name in CONTACT_FIELDS:
        value = item.get(name)
        if isinstance(value, str) and len(value) > MAX_STRING:
            return f"{name} is longer than {MAX_STRING} characters ({len(value)})"
    for custom in item.get("customFields") or ():
        value = custom.get("value")
        if isinstance(value, str) and len(value) > MAX_STRING:
            name = f"customFields[{custom.get('name') or custom.get('id')}]"
            return f"{name} is longer than {MAX_STRING} characters ({len(value)})"
    return None
