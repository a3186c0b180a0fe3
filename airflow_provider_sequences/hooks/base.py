"""What the Reply.io and Whippy hooks share: connection, session, rate limits, retries, errors."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import ipaddress
import logging
import math
import random
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any, ClassVar
from urllib.parse import quote

import msgspec
import requests
import urllib3
from airflow.sdk import BaseHook
from pyrate_limiter import Limiter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from urllib3.exceptions import LocationParseError, NewConnectionError
from urllib3.util import parse_url

from airflow_provider_sequences import __version__
from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    RetryWaitTooLongError,
    SequencesApiError,
    UnexpectedAnswerError,
)
from airflow_provider_sequences.hooks import budget

#: Whole-request timeouts in seconds: (connect, read).
DEFAULT_TIMEOUT = (10.0, 60.0)
DEFAULT_MAX_ATTEMPTS = 6

#: Whole request, connect to the last byte of the answer (seconds).
DEFAULT_REQUEST_DEADLINE = 300.0
#: The largest answer read (decoded), in megabytes.
DEFAULT_MAX_ANSWER_MB = 64.0
#: The longest wait a service may ask for before the run stops instead (seconds).
DEFAULT_MAX_RETRY_WAIT = 900.0
#: A wait asked for beyond this is a broken header, not a request to wait.
_SANE_WAIT = 7 * 24 * 3600.0
_READ_CHUNK = 256 * 1024

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}

# pyrate-limiter announces every bucket it creates at INFO; that is noise in task logs.
logging.getLogger("pyrate_limiter").setLevel(logging.WARNING)
#: Answers of unexpected shape are logged here: Airflow's own hook loggers do not propagate, and
#: this line (a shape, never values) must reach the task log however the hook is used.
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RateBucket:
    """A named family of endpoints that share one set of limits (requests per seconds)."""

    name: str
    limits: tuple[tuple[int, float], ...]


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


_JSON_HEADERS = {"Content-Type": "application/json"}
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


class SequencesHook(BaseHook):
    """Base of the service hooks: one ``requests`` session built from an Airflow connection.

    The connection's password is the API key and its host, when set, replaces the service's
    base URL (point it at a simulator to test offline). Every request waits for the client-side
    rate limiter, then is retried with jittered exponential backoff on 429 (waiting what the
    service asks), 5xx, dropped connections and timeouts, never on another 4xx. Error answers
    become :class:`~airflow_provider_sequences.exceptions.SequencesApiError`, which never holds
    the key.

    :param conn_id: the Airflow connection to use.
    :param timeout: (connect, read) timeouts in seconds; the connection's ``timeout`` extra
        (one number, the read timeout) overrides the default.
    :param max_attempts: attempts per request, the first included; the connection's
        ``max_attempts`` extra overrides the default.
    :param rate_limit_conn_id: where the account's rate budget lives (see
        :mod:`~airflow_provider_sequences.hooks.budget`); the connection's ``rate_limit_conn_id``
        extra when not given, else a file shared by the processes of this machine.
    """

    conn_name_attr: ClassVar[str]
    default_conn_name: ClassVar[str]
    conn_type: ClassVar[str]
    hook_name: ClassVar[str]
    #: The service's own origin and the path prefix every endpoint lives under.
    default_base_url: ClassVar[str]
    api_prefix: ClassVar[str]

    def __init__(
        self,
        conn_id: str | None = None,
        *,
        timeout: tuple[float, float] | None = None,
        max_attempts: int | None = None,
        rate_limit_conn_id: str | None = None,
    ) -> None:
        super().__init__()
        # Airflow's convention: the id under the hook's conn_name_attr (reply_conn_id, ...).
        setattr(self, self.conn_name_attr, conn_id or self.default_conn_name)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._rate_limit_conn_id = rate_limit_conn_id
        self._account: str | None = None
        self._limiter_cache: dict[tuple[str, str], Limiter] = {}
        #: Requests sent by this hook (attempts included), by "METHOD bucket".
        self.request_counts: dict[str, int] = {}
        #: Called with every answer once its body is read (the contract check records shapes):
        #: a session's own response hooks run before that, and reading the body there would
        #: leave none for the hook.
        self.answer_observers: list[Callable[[requests.Response], Any]] = []
        #: Retries made after an answer was lost: the first attempt may have been applied.
        self.uncertain_retries = 0

    # -- connection ---------------------------------------------------------------------------

    @property
    def conn_id(self) -> str:
        """The connection id, whatever the service calls it (``conn_name_attr``)."""
        return str(getattr(self, self.conn_name_attr))

    @cached_property
    def connection(self) -> Any:
        return self.get_connection(self.conn_id)

    @cached_property
    def extras(self) -> dict[str, Any]:
        """Connection extras, accepting both plain and ``extra__<type>__`` prefixed names."""
        raw = dict(self.connection.extra_dejson or {})
        prefix = f"extra__{self.conn_type}__"
        return {
            (key[len(prefix) :] if key.startswith(prefix) else key): value
            for key, value in raw.items()
            if value not in (None, "")
        }

    def extra_number(self, name: str, default: float) -> float:
        value = self.extras.get(name, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isnan(number):
            raise ValueError(
                f"connection {self.conn_id!r}: extra {name!r} must be a number, got {value!r}"
            ) from None
        return number

    @cached_property
    def base_url(self) -> str:
        conn = self.connection
        try:
            return resolve_base_url(conn.host, conn.port, self.default_base_url, self.api_prefix)
        except ValueError as exc:
            raise ValueError(f"connection {self.conn_id!r}: {exc}") from None

    @cached_property
    def api_key(self) -> str:
        key = (self.connection.password or "").strip()
        if not key:
            raise ValueError(
                f"connection {self.conn_id!r} has no API key: put the {self.hook_name} key in its password"
            )
        if _has_control_or_space(key) or not key.isprintable():
            # Never quote the key: a message with it escaped slips past Airflow's masker.
            raise ValueError(
                f"connection {self.conn_id!r}: the API key in its password holds spaces or control "
                "characters (a line break pasted with it?); paste the key alone"
            )
        return key

    @property
    def request_deadline(self) -> float:
        """Seconds one request may take, from connecting to the answer's last byte."""
        value = self.extra_number("request_deadline", DEFAULT_REQUEST_DEADLINE)
        if not value > 0:
            raise ValueError(f"connection {self.conn_id!r}: request_deadline must be positive")
        return value

    @property
    def max_answer_bytes(self) -> int:
        value = self.extra_number("max_answer_mb", DEFAULT_MAX_ANSWER_MB)
        if not value > 0:
            raise ValueError(f"connection {self.conn_id!r}: max_answer_mb must be positive")
        return int(value * 1024 * 1024)

    @property
    def max_retry_wait(self) -> float:
        """The longest wait a service may ask for (seconds) before the run stops instead."""
        value = self.extra_number("max_retry_wait", DEFAULT_MAX_RETRY_WAIT)
        if not value >= 0:
            raise ValueError(f"connection {self.conn_id!r}: max_retry_wait must not be negative")
        return value

    @property
    def timeout(self) -> tuple[float, float]:
        if self._timeout is not None:
            return self._timeout
        return (DEFAULT_TIMEOUT[0], self.extra_number("timeout", DEFAULT_TIMEOUT[1]))

    @property
    def max_attempts(self) -> int:
        if self._max_attempts is not None:
            return self._max_attempts
        return max(int(self.extra_number("max_attempts", DEFAULT_MAX_ATTEMPTS)), 1)

    @property
    def write_requests(self) -> int:
        """Write requests sent so far (attempts included)."""
        return sum(n for name, n in self.request_counts.items() if not name.startswith("GET "))

    @property
    def read_requests(self) -> int:
        """Read requests sent so far (attempts included)."""
        return sum(n for name, n in self.request_counts.items() if name.startswith("GET "))

    def get_conn(self) -> requests.Session:
        """The hook's ``requests`` session, authenticated for the service."""
        return self.session

    @cached_property
    def session(self) -> requests.Session:
        session = _NoRedirects()
        session.headers.update(
            {
                "User-Agent": f"airflow-provider-sequences/{__version__} requests/{requests.__version__}",
                "Accept": "application/json",
            }
        )
        self.authenticate(session)
        return session

    def authenticate(self, session: requests.Session) -> None:
        """Make ``session`` send the credential: by default the :meth:`auth_headers`, checked.

        The auth hook point: a service whose token expires (OAuth) overrides this to set
        ``session.auth`` to a ``requests.auth.AuthBase`` that fetches and refreshes its token
        (and :meth:`credential_scope` to name the credential without it)."""
        headers = self.auth_headers()
        for name, value in headers.items():
            if _has_control_or_space(value.replace(" ", "", 1) if name == "Authorization" else value):
                # Caught here, not by requests: its InvalidHeader message quotes the value.
                raise ValueError(
                    f"connection {self.conn_id!r}: the value for the {name} header holds spaces or "
                    "control characters; check the connection's password and extras"
                )
        session.headers.update(headers)

    # -- what each service defines ------------------------------------------------------------

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate (and, for Reply, name the acting user)."""
        raise NotImplementedError

    def rate_buckets(self) -> list[RateBucket]:
        """The service's documented limits, after the connection's overrides."""
        raise NotImplementedError

    def bucket_for(self, method: str, path: str) -> str:
        """Which bucket a request draws from."""
        raise NotImplementedError

    def credential_scope(self) -> str:
        """The credential, as an opaque in-process string (a digest of the key)."""
        digest = hashlib.sha256(self.api_key.encode()).hexdigest()[:16]
        return f"{self.conn_type}:{self.base_url}:{digest}"

    def resolve_account(self) -> str:
        """Who the service counts this connection's requests against, without a secret.

        By default a keyed hash (HMAC-SHA256, keyed by the API key) of the base URL: two
        connections with one key share it, and it reveals nothing of the key. Services with
        their own notion of an account (Reply's acting user) override this.
        """
        mac = hmac.new(self.api_key.encode(), self.base_url.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{self.conn_type}:{parse_url(self.base_url).netloc}:key-{mac}"

    #: Whether :meth:`resolve_account` sends a request (then it runs only when asked for).
    account_needs_request: ClassVar[bool] = False

    @property
    def account(self) -> str:
        """The account this connection reaches: it names the sync state's scope and the rate
        budget, so two connections to one account share both. Never holds a secret."""
        if self._account is None:
            self._account = self.resolve_account()
        return self._account

    def rate_limit_scope(self) -> str:
        """Whose budget a request draws from. A service whose account takes a request to learn
        (Reply's whoami) keeps the credential's budget throughout: a worker's whoami could not
        wait on the account's budget before the account is known, and several workers starting
        at once then met 429s. Connections with one key share it; two keys of one user do not."""
        if self.account_needs_request:
            return self.credential_scope()
        return self.account

    #: A hint for a person, by the service's error code, added to the error's detail.
    error_hints: ClassVar[Mapping[str, str]] = {}

    def parse_error(self, method: str, path: str, response: requests.Response) -> SequencesApiError:
        """Turn an error answer into the provider's exception: the body read as a JSON object
        (any other body counts as none), then read by :meth:`describe_error`."""
        body: dict[str, Any] = {}
        if response.content:
            try:
                parsed = response.json()
                body = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                body = {}
        code, detail, errors = self.describe_error(body)
        if response.status_code == 401 and not detail:
            detail = "the API key is missing, wrong or revoked"
        hint = self.error_hints.get(str(code or ""))
        if hint:
            detail = f"{detail}: {hint}" if detail else hint
        return SequencesApiError(
            service=self.hook_name,
            method=method,
            path=path,
            status=response.status_code,
            code=code,
            detail=detail,
            errors=errors,
            retry_after=self.retry_after(response) if response.status_code == 429 else None,
        )

    def describe_error(self, body: dict[str, Any]) -> tuple[str | None, str | None, list[dict[str, Any]]]:
        """The service's error code, detail and field errors (each ``{"field", "detail"}``) in
        an error answer's JSON object (``{}`` when it had none)."""
        raise NotImplementedError

    def retry_after(self, response: requests.Response) -> float | None:
        """Seconds a 429 asks to wait: ``Retry-After`` unless the service says it otherwise."""
        return parse_wait(response.headers.get("Retry-After"))

    # -- requests -----------------------------------------------------------------------------

    def _limiter(self, bucket: str) -> Limiter:
        """The shared limiter of this account's ``bucket`` (see :mod:`.budget`)."""
        scope = self.rate_limit_scope()
        limiter = self._limiter_cache.get((scope, bucket))
        if limiter is None:
            time_scale = self.extra_number("rate_limit_time_scale", 1.0)
            if time_scale <= 0:
                raise ValueError(f"connection {self.conn_id!r}: rate_limit_time_scale must be positive")
            limits = {b.name: b.limits for b in self.rate_buckets()}[bucket]
            backend, location, connect = self._budget_backend
            limiter = budget.shared_limiter(
                scope,
                bucket,
                limits,
                time_scale=time_scale,
                backend=backend,
                location=location,
                connect=connect,
            )
            self._limiter_cache[(scope, bucket)] = limiter
        return limiter

    @cached_property
    def _budget_backend(self) -> tuple[str, str | None, Any]:
        conn_id = self._rate_limit_conn_id or self.extras.get("rate_limit_conn_id")
        if not conn_id:
            return str(self.extras.get("rate_limit_backend", "sqlite")), None, None
        return budget.backend_of(self.get_connection(str(conn_id)))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        repeat_safe: bool = True,
    ) -> requests.Response:
        """Send one API request through the rate limiter and the retry policy.

        :param method: HTTP method.
        :param path: the endpoint's path, API prefix included (``/v3/whoami``).
        :param params: query parameters; ``None`` values are left out.
        :param json: the JSON body.
        :param repeat_safe: whether sending the request twice does no harm. When false, a
            request whose answer was lost is not retried; it raises
            :class:`~airflow_provider_sequences.exceptions.OutcomeUnknownError` instead.
        :return: the successful response.
        """
        query = {k: v for k, v in (params or {}).items() if v is not None}
        # Encoded once, not on every attempt, and with msgspec (Airflow core depends on it):
        # a 1,000-contact import encodes several times faster than through requests' json=.
        # The JSON is compact and UTF-8 rather than requests' spaced, ASCII-escaped text:
        # the same document.
        body = None if json is None else _encode_json(json)
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: self._should_retry(exc, repeat_safe)),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            response: requests.Response = retrying(self._send, method, path, query, body, repeat_safe)
        except requests.RequestException as exc:
            raise self._transport_error(method, path, exc, repeat_safe) from exc
        return response

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like :meth:`request`, returning the parsed JSON body (``None`` for an empty one)."""
        response = self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return decode_json(response.content)
        except ValueError:
            raise self.unexpected(
                method,
                path,
                response.status_code,
                f"the answer is not JSON ({response.headers.get('Content-Type', 'no content type')})",
                repeat_safe=kwargs.get("repeat_safe", True),
            ) from None

    def unexpected(
        self, method: str, path: str, status: int | None, detail: str, *, repeat_safe: bool = True
    ) -> SequencesApiError:
        """The error for an answer of a shape the provider does not know: transient. For a write
        that is not safe to repeat it is :class:`OutcomeUnknownError`: the service got the
        request and may have applied it."""
        cls = UnexpectedAnswerError if repeat_safe else OutcomeUnknownError
        return cls(
            service=self.hook_name,
            method=method,
            path=path,
            status=status,
            code="unexpectedAnswer",
            detail=detail,
        )

    def expect_object(
        self,
        value: Any,
        method: str,
        path: str,
        *fields: tuple[str, type | tuple[type, ...]],
        repeat_safe: bool = True,
    ) -> dict[str, Any]:
        """``value`` when it is a JSON object whose ``fields`` have the given types; else an
        :class:`UnexpectedAnswerError` describing the answer's shape (never its values), or
        :class:`OutcomeUnknownError` for a write that is not ``repeat_safe``."""
        problem = None
        if not isinstance(value, dict):
            problem = "not an object"
        else:
            for name, kind in fields:
                if not isinstance(value.get(name), kind):
                    problem = f"{name!r} is {'missing' if name not in value else 'of the wrong type'}"
                    break
        if problem is None:
            return value  # type: ignore[no-any-return]
        message = f"an answer of unexpected shape ({problem}): {describe_shape(value)}"
        log.warning("%s %s %s: %s", self.hook_name, method, path, message)
        raise self.unexpected(method, path, 200, message, repeat_safe=repeat_safe)

    def _send(
        self, method: str, path: str, params: dict[str, Any], body: bytes | None, repeat_safe: bool = True
    ) -> requests.Response:
        bucket = self.bucket_for(method, path)
        self._limiter(bucket).try_acquire(bucket, blocking=True)
        counter = f"{method} {bucket}"
        self.request_counts[counter] = self.request_counts.get(counter, 0) + 1
        started = time.monotonic()
        deadline = started + self.request_deadline
        connect, read = self.timeout
        response = self.session.request(
            method,
            self.base_url + path,
            params=params,
            data=body,
            headers=None if body is None else _JSON_HEADERS,
            timeout=(min(connect, self.request_deadline), min(read, self.request_deadline)),
            allow_redirects=False,
            stream=True,
        )
        try:
            self._read_body(response, deadline, method, path, repeat_safe)
        finally:
            response.close()
        for observe in self.answer_observers:
            observe(response)
        self.log.debug(
            "%s %s %s -> %s in %.3f s",
            self.hook_name,
            method,
            path,
            response.status_code,
            time.monotonic() - started,
        )
        if 300 <= response.status_code < 400:
            raise self._redirect_error(method, path, response)
        if response.status_code >= 400:
            error = self.parse_error(method, path, response)
            if error.retry_after is not None and error.retry_after > self.max_retry_wait:
                raise self._wait_too_long(error)
            raise error
        return response

    def _wait_too_long(self, error: SequencesApiError) -> RetryWaitTooLongError:
        asked = error.retry_after or 0.0
        return RetryWaitTooLongError(
            service=error.service,
            method=error.method,
            path=error.path,
            status=error.status,
            code="retryWaitTooLong",
            detail=(
                f"the service asked to wait {_duration(asked)} before trying again, longer than the "
                f"connection's max_retry_wait ({_duration(self.max_retry_wait)}); stopping here: a "
                "later run resumes where this one stopped"
            ),
            retry_after=asked,
        )

    def _read_body(
        self, response: requests.Response, deadline: float, method: str, path: str, repeat_safe: bool
    ) -> None:
        """Read the answer into ``response.content``, within the deadline and the size cap.

        A read timeout bounds each socket read only: an answer trickled a byte at a time would
        never time out, so the deadline is checked between reads (each at most one read long).
        """
        limit = self.max_answer_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(method, path, response.status_code, repeat_safe)
        chunks: list[bytes] = []
        size = 0
        raw = response.raw
        while True:
            if time.monotonic() > deadline:
                raise RequestDeadlineExceeded(
                    f"no complete answer within the request deadline of {self.request_deadline:g} s"
                )
            try:
                chunk = raw.read1(_READ_CHUNK, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError as exc:
                raise requests.exceptions.ReadTimeout("the answer stopped arriving") from exc
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                raise requests.exceptions.ConnectionError("the answer was cut off") from exc
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise self._too_large(method, path, response.status_code, repeat_safe)
            chunks.append(chunk)
        response._content = b"".join(chunks)

    def _too_large(self, method: str, path: str, status: int, repeat_safe: bool) -> SequencesApiError:
        return self.unexpected(
            method,
            path,
            status,
            f"the answer is larger than the connection's max_answer_mb ({self.max_answer_bytes / 2**20:g})",
            repeat_safe=repeat_safe,
        )

    def _redirect_error(self, method: str, path: str, response: requests.Response) -> SequencesApiError:
        target = origin_of(response.headers.get("Location", ""))
        return SequencesApiError(
            service=self.hook_name,
            method=method,
            path=path,
            status=response.status_code,
            code="redirectRefused",
            detail=(
                f"the service redirected to {target}; redirects are never followed, so the API key "
                "does not leave for another address: set the connection's host to the service's "
                "own address"
            ),
        )

    def _should_retry(self, exc: BaseException, repeat_safe: bool) -> bool:
        if isinstance(exc, (UnexpectedAnswerError, OutcomeUnknownError)):
            return False  # the same answer would come again (or a write may have been applied)
        if isinstance(exc, SequencesApiError):
            return exc.is_retryable
        if isinstance(exc, requests.RequestException):
            return repeat_safe or _is_safe_transport_error(exc)
        return False

    _backoff = wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, SequencesApiError) and exc.retry_after is not None:
            # The service said how long; a little jitter keeps parallel workers apart.
            return exc.retry_after + random.uniform(0, min(0.1 * exc.retry_after, 1.0))
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, requests.RequestException) and not _is_safe_transport_error(exc):
            self.uncertain_retries += 1
        wait = state.next_action.sleep if state.next_action else 0.0
        self.log.warning(
            "%s; retrying in %.1f s (attempt %d of %d)",
            _describe(exc),
            wait,
            state.attempt_number + 1,
            self.max_attempts,
        )

    def _transport_error(
        self, method: str, path: str, exc: requests.RequestException, repeat_safe: bool
    ) -> SequencesApiError:
        what = str(exc) if isinstance(exc, RequestDeadlineExceeded) else type(exc).__name__
        detail = f"{what} talking to {origin_of(self.base_url).partition('://')[2]}"
        if repeat_safe or _is_safe_transport_error(exc):
            return SequencesApiError(
                service=self.hook_name,
                method=method,
                path=path,
                status=None,
                code="connectionFailed",
                detail=detail,
            )
        return OutcomeUnknownError(
            service=self.hook_name,
            method=method,
            path=path,
            status=None,
            code="outcomeUnknown",
            detail=f"{detail}; the request was sent and may or may not have been applied",
        )

    # -- Test Connection ----------------------------------------------------------------------

    def check_credentials(self) -> str:
        """Make the cheapest authenticated call and say who the key acts as."""
        raise NotImplementedError

    def test_connection(self) -> tuple[bool, str]:
        """Used by the Airflow UI's Test button: one cheap authenticated read."""
        # The UI waits for the answer: two attempts, not the full retry budget.
        saved, self._max_attempts = self._max_attempts, min(self.max_attempts, 2)
        try:
            return True, self.check_credentials()
        except SequencesApiError as exc:
            if exc.status == 401:
                return False, f"{self.hook_name} rejected the API key (401): check the connection's password"
            return False, str(exc)
        except ValueError as exc:
            return False, str(exc)
        finally:
            self._max_attempts = saved


class PageGuard:
    """Stops a paged read the answers contradict, which would otherwise never end or skip
    items: a page seen before, a page longer than asked for, or an empty page while the
    service says more follow (``hasMore``, or a ``total`` past what arrived).

    :param hook: the hook reading, for its errors.
    :param path: the endpoint paged.
    :param page_size: the largest page asked for.
    """

    def __init__(self, hook: SequencesHook, path: str, page_size: int) -> None:
        self._hook = hook
        self._path = path
        self._page_size = page_size
        self._seen: set[bytes] = set()

    def check(self, items: list[Any], *, offset: int, more: bool) -> None:
        """One page read at ``offset``; ``more`` is whether the service says pages follow."""
        problem = None
        if len(items) > self._page_size:
            problem = (
                f"a page of {len(items)} items at offset {offset}, more than {self._page_size} asked for"
            )
        elif more and not items:
            problem = f"an empty page at offset {offset} while the service says more items follow"
        elif items:
            digest = hashlib.blake2b(_encode_json(items), digest_size=16).digest()
            if digest in self._seen:
                problem = f"the page at offset {offset} repeats an earlier page"
            self._seen.add(digest)
        if problem is not None:
            message = f"stopped reading pages: {problem}"
            self._hook.log.warning("%s GET %s: %s", self._hook.hook_name, self._path, message)
            raise self._hook.unexpected("GET", self._path, 200, message)


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
