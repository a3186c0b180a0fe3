"""What the Reply.io and Whippy hooks share: connection, session, rate limits, retries, errors."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msgspec
import requests
from airflow.sdk import BaseHook
from pyrate_limiter import Limiter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from urllib3.exceptions import NewConnectionError

from airflow_provider_sequences import __version__
from airflow_provider_sequences.exceptions import OutcomeUnknownError, SequencesApiError
from airflow_provider_sequences.hooks import budget

#: Whole-request timeouts in seconds: (connect, read).
DEFAULT_TIMEOUT = (10.0, 60.0)
DEFAULT_MAX_ATTEMPTS = 6

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}

# pyrate-limiter announces every bucket it creates at INFO; that is noise in task logs.
logging.getLogger("pyrate_limiter").setLevel(logging.WARNING)


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


def resolve_base_url(host: str | None, port: int | None, default: str, api_prefix: str) -> str:
    """The origin requests go to: the connection's host when set, else the service's own.

    A bare host name means https. Plain http is refused unless the host is loopback, because
    the API key travels in a header. A trailing API prefix (``/v1``) typed by the user is
    dropped, as hook paths carry it.
    """
    raw = (host or "").strip() or default
    if "://" not in raw:
        raw = f"https://{raw}"
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the connection's host must be an http(s) URL, got {raw!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"refusing plain http to {parts.hostname}: the API key would travel unencrypted; "
            "use https (plain http is allowed for loopback simulators only)"
        )
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    path = parts.path.rstrip("/")
    if path.endswith(api_prefix):
        path = path[: -len(api_prefix)]
    return f"{parts.scheme}://{netloc}{path}"


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
        self.conn_id = conn_id or self.default_conn_name
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._rate_limit_conn_id = rate_limit_conn_id
        self._account: str | None = None
        self._limiter_cache: dict[tuple[str, str], Limiter] = {}
        #: Requests sent by this hook (attempts included), by "METHOD bucket".
        self.request_counts: dict[str, int] = {}
        #: Retries made after an answer was lost: the first attempt may have been applied.
        self.uncertain_retries = 0

    # -- connection ---------------------------------------------------------------------------

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
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"connection {self.conn_id!r}: extra {name!r} must be a number, got {value!r}"
            ) from None

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
        return key

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
        session = requests.Session()
        session.headers.update(
            {
                "User-Agent": f"airflow-provider-sequences/{__version__} requests/{requests.__version__}",
                "Accept": "application/json",
            }
        )
        session.headers.update(self.auth_headers())
        return session

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
        return f"{self.conn_type}:{urlsplit(self.base_url).netloc}:key-{mac}"

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
        """Who the service counts requests against: the account once known (a service whose
        account takes a request to learn uses the credential until then)."""
        if self._account is None and not self.account_needs_request:
            return self.account
        return self._account or self.credential_scope()

    def parse_error(self, method: str, path: str, response: requests.Response) -> SequencesApiError:
        """Turn an error answer into the provider's exception."""
        raise NotImplementedError

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
            response: requests.Response = retrying(self._send, method, path, query, body)
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
            raise SequencesApiError(
                service=self.hook_name,
                method=method,
                path=path,
                status=response.status_code,
                detail=f"the answer is not JSON ({response.headers.get('Content-Type', 'no content type')})",
            ) from None

    def _send(self, method: str, path: str, params: dict[str, Any], body: bytes | None) -> requests.Response:
        bucket = self.bucket_for(method, path)
        self._limiter(bucket).try_acquire(bucket, blocking=True)
        counter = f"{method} {bucket}"
        self.request_counts[counter] = self.request_counts.get(counter, 0) + 1
        started = time.monotonic()
        response = self.session.request(
            method,
            self.base_url + path,
            params=params,
            data=body,
            headers=None if body is None else _JSON_HEADERS,
            timeout=self.timeout,
        )
        self.log.debug(
            "%s %s %s -> %s in %.3f s",
            self.hook_name,
            method,
            path,
            response.status_code,
            time.monotonic() - started,
        )
        if response.status_code >= 400:
            raise self.parse_error(method, path, response)
        return response

    @staticmethod
    def _should_retry(exc: BaseException, repeat_safe: bool) -> bool:
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
        detail = f"{type(exc).__name__} talking to {urlsplit(self.base_url).netloc}"
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


def iso_datetime(value: datetime | str | None) -> str | None:
    """An aware datetime as ISO 8601 text with ``Z`` for UTC; text passes through."""
    if value is None or isinstance(value, str):
        return value
    return value.isoformat().replace("+00:00", "Z")


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, SequencesApiError):
        return str(exc)
    return f"connection problem ({type(exc).__name__})"
