"""What the Reply.io and Whippy hooks share: the connection and its settings, the session and
its credential, the rate budget, errors, and Test Connection. Sending requests is
:mod:`.transport`; URLs, JSON and waits are :mod:`.wire`."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import requests
from airflow.sdk import BaseHook
from pyrate_limiter import Limiter
from urllib3.util import parse_url

from airflow_provider_sequences import __version__
from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks import budget
from airflow_provider_sequences.hooks.transport import PageGuard, Transport
from airflow_provider_sequences.hooks.wire import (
    _has_control_or_space,
    _NoRedirects,
    decode_json,
    describe_shape,
    iso_datetime,
    origin_of,
    parse_wait,
    path_segment,
    resolve_base_url,
)
from airflow_provider_sequences.sync import pace

__all__ = [
    "PageGuard",
    "RateBucket",
    "SequencesHook",
    "decode_json",
    "describe_shape",
    "iso_datetime",
    "origin_of",
    "parse_wait",
    "path_segment",
    "resolve_base_url",
]

#: Whole-request timeouts in seconds: (connect, read).
DEFAULT_TIMEOUT = (10.0, 60.0)
DEFAULT_MAX_ATTEMPTS = 6

#: Whole request, connect to the last byte of the answer (seconds).
DEFAULT_REQUEST_DEADLINE = 300.0
#: The largest answer read (decoded), in megabytes.
DEFAULT_MAX_ANSWER_MB = 64.0
#: The longest wait a service may ask for before the run stops instead (seconds).
DEFAULT_MAX_RETRY_WAIT = 900.0

# pyrate-limiter announces every bucket it creates at INFO; that is noise in task logs.
logging.getLogger("pyrate_limiter").setLevel(logging.WARNING)


@dataclass(frozen=True)
class RateBucket:
    """A named family of endpoints that share one set of limits (requests per seconds)."""

    name: str
    limits: tuple[tuple[int, float], ...]


class SequencesHook(Transport, BaseHook):
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

    def floor_seconds(self, since: Mapping[str, int] | None = None) -> float:
        """Least time the limits allow for the requests sent since ``since`` (a copy of
        :attr:`request_counts`): the slowest bucket's floor (see
        :mod:`airflow_provider_sequences.sync.pace`)."""
        time_scale = self.extra_number("rate_limit_time_scale", 1.0)
        before = since or {}
        floor = 0.0
        for bucket in self.rate_buckets():
            sent = sum(
                count - before.get(name, 0)
                for name, count in self.request_counts.items()
                if name.rpartition(" ")[2] == bucket.name
            )
            floor = max(floor, pace.floor_seconds(sent, bucket.limits) / time_scale)
        return floor

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
