"""What crosses the wire, for every hook: base URLs and where a key may go, JSON in and out,
waits a service asks for, shapes of answers, and transport errors."""

from __future__ import annotations

import email.utils
import ipaddress
import math
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import msgspec
import requests
from urllib3.exceptions import LocationParseError, NewConnectionError
from urllib3.util import parse_url

from airflow_provider_sequences.exceptions import SequencesApiError

#: A wait asked for beyond this is a broken header, not a request to wait.
_SANE_WAIT = 7 * 24 * 3600.0

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(hostname: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if hostname.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def _has_control_or_space(text: str) -> bool:
    return any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def resolve_base_url(host: str | None, port: int | None, default: str, api_prefix: str) -> str:
    """The origin requests go to: the connection's host when set, else the service's own.

    A bare host name means https. Plain http is refused unless the host is loopback, because
    the API key travels in a header. A trailing API prefix (``/v1``) typed by the user is
    dropped, as hook paths carry it.

    The URL is read with urllib3's parser, the one that decides where requests connects, so
    the loopback check sees the host the key would really go to. A user name or password
    (``user:password@``), a backslash, spaces, a query or a fragment are refused; messages
    name the host only, never what came before an ``@``.
    """
    raw = (host or "").strip() or default
    if "\\" in raw or _has_control_or_space(raw):
        raise ValueError(
            "the connection's host must be a plain http(s) URL: it holds a backslash, a space or a "
            "control character"
        )
    if "://" not in raw:
        raw = f"https://{raw}"
    try:
        parts = parse_url(raw)
    except LocationParseError:
        raise ValueError("the connection's host is not a valid URL") from None
    if parts.auth is not None or "@" in (parts.netloc or ""):
        raise ValueError(
            f"the connection's host for {parts.host or 'the service'} carries a user name or password "
            "(user:password@): remove it; the API key belongs in the connection's password"
        )
    scheme = (parts.scheme or "").lower()
    if scheme not in ("http", "https") or not parts.host:
        raise ValueError(f"the connection's host must be an http(s) URL, got scheme {scheme or 'none'!r}")
    if parts.query is not None or parts.fragment is not None:
        raise ValueError(f"the connection's host for {parts.host} must not carry a query (?) or fragment (#)")
    if scheme == "http" and not is_loopback(parts.host):
        raise ValueError(
            f"refusing plain http to {parts.host}: the API key would travel unencrypted; "
            "use https (plain http is allowed for loopback simulators only)"
        )
    netloc = parts.host
    effective_port = parts.port if parts.port is not None else port
    if effective_port:
        netloc = f"{netloc}:{int(effective_port)}"
    path = (parts.path or "").rstrip("/")
    if path.endswith(api_prefix):
        path = path[: -len(api_prefix)]
    base = f"{scheme}://{netloc}{path}"
    # What requests will prepare from it must connect to the host checked above.
    prepared = requests.Request("GET", f"{base}{api_prefix}/").prepare().url or ""
    if parse_url(prepared).host != parts.host:
        raise ValueError(f"the connection's host for {parts.host} is ambiguous: write it as a plain URL")
    return base


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL, without a user name, password, path or query."""
    try:
        parts = parse_url(url)
    except LocationParseError:
        return "an unreadable address"
    if not parts.host:
        return "a relative address"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme or 'http'}://{parts.host}{port}"


def parse_wait(value: Any, *, scale: float = 1.0) -> float | None:
    """A wait the service asked for, in seconds, or ``None`` when it is not a sane number.

    ``Retry-After`` may be seconds or an HTTP date. Negative, NaN, infinite and absurd values
    (beyond a week) mean the header is broken: the caller falls back to its own backoff.
    """
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text) * scale
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
        seconds = max(seconds, 0.0)
    if not math.isfinite(seconds) or seconds < 0 or seconds > _SANE_WAIT:
        return None
    return seconds


def describe_shape(value: Any, depth: int = 2) -> str:
    """A JSON value's shape for a log line: types, sizes and field names, never the values."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "empty string" if not value else "string"
    if isinstance(value, list):
        if not value:
            return "empty list"
        inner = f" of {describe_shape(value[0], depth - 1)}" if depth > 0 else ""
        return f"list of {len(value)}{inner}"
    if isinstance(value, dict):
        if not value:
            return "{}"
        if depth <= 0:
            return f"object with {len(value)} fields"
        fields = [
            f"{name if _FIELD_NAME.fullmatch(str(name)) else '<key>'}: {describe_shape(inner, depth - 1)}"
            for name, inner in list(value.items())[:8]
        ]
        more = f", +{len(value) - 8} more" if len(value) > 8 else ""
        return "{" + ", ".join(fields) + more + "}"
    return type(value).__name__


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def path_segment(value: Any, what: str) -> str:
    """An id as one URL path segment, escaped; ids that could reach another path are refused."""
    text = str(value).strip()
    if not text:
        raise ValueError(f"{what} is empty")
    if any(mark in text for mark in ("/", "?", "#", "\\")) or ".." in text or _has_control_or_space(text):
        raise ValueError(
            f"{what} {text!r} is not a valid id: it holds '/', '?', '#', '..', a backslash or a space"
        )
    return quote(text, safe="")


_JSON_ENCODER = msgspec.json.Encoder()


def _encode_json(value: Any) -> bytes:
    """A request body as compact UTF-8 JSON."""
    return _JSON_ENCODER.encode(value)


def decode_json(content: bytes) -> Any:
    """A response body parsed with msgspec: about twice as fast as ``response.json()`` on a
    1,000-item answer. JSON is UTF-8 (RFC 8259); a body that is not JSON raises ValueError."""
    return msgspec.json.decode(content)


def _is_safe_transport_error(exc: BaseException) -> bool:
    """The request never reached the service: the connection could not be made."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NewConnectionError):
            return True
        reason = getattr(seen, "reason", None)
        if isinstance(reason, BaseException) and isinstance(reason, NewConnectionError):
            return True
        arg = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = arg or seen.__cause__ or seen.__context__
    return False


class _NoRedirects(requests.Session):
    """A session that never follows a redirect: the key, the acting user and the contacts
    would go to its target. Even with ``allow_redirects=False`` requests reads a redirect's
    whole body to prepare the next request; here the hook reads it, within its caps."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def iso_datetime(value: datetime | str | None) -> str | None:
    """An aware datetime as ISO 8601 text with ``Z`` for UTC; text passes through."""
    if value is None or isinstance(value, str):
        return value
    return value.isoformat().replace("+00:00", "Z")


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, SequencesApiError):
        return str(exc)
    if isinstance(exc, RequestDeadlineExceeded):
        return f"connection problem ({exc})"
    return f"connection problem ({type(exc).__name__})"


def _duration(seconds: float) -> str:
    """``36000`` -> ``10 h 0 min``: a wait as a person reads it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class RequestDeadlineExceeded(requests.exceptions.ReadTimeout):
    """The whole answer did not arrive within the connection's ``request_deadline``."""
