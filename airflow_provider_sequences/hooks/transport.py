"""How a hook sends a request: the rate limiter, retries, the deadline and size cap on the
answer, and the errors of answers the provider does not know (a mixin of
:class:`~airflow_provider_sequences.hooks.base.SequencesHook`)."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, ClassVar

import requests
import urllib3
from pyrate_limiter import Limiter
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from airflow_provider_sequences.exceptions import (
    OutcomeUnknownError,
    RetryWaitTooLongError,
    SequencesApiError,
    UnexpectedAnswerError,
)
from airflow_provider_sequences.hooks.wire import (
    RequestDeadlineExceeded,
    _describe,
    _duration,
    _encode_json,
    _is_safe_transport_error,
    decode_json,
    describe_shape,
    origin_of,
)

_READ_CHUNK = 256 * 1024
_JSON_HEADERS = {"Content-Type": "application/json"}
#: Answers of unexpected shape are logged here: Airflow's own hook loggers do not propagate, and
#: this line (a shape, never values) must reach the task log however the hook is used.
log = logging.getLogger("airflow_provider_sequences.hooks.base")


class Transport:
    """Sending requests; what it needs of the hook is declared here, defined by the hook."""

    hook_name: ClassVar[str]
    log: Any
    #: Requests sent by this hook (attempts included), by "METHOD bucket".
    request_counts: dict[str, int]
    answer_observers: list[Callable[[requests.Response], Any]]
    uncertain_retries: int

    @property
    def base_url(self) -> str:
        raise NotImplementedError

    @property
    def session(self) -> requests.Session:
        raise NotImplementedError

    @property
    def max_attempts(self) -> int:
        raise NotImplementedError

    @property
    def timeout(self) -> tuple[float, float]:
        raise NotImplementedError

    @property
    def request_deadline(self) -> float:
        raise NotImplementedError

    @property
    def max_answer_bytes(self) -> int:
        raise NotImplementedError

    @property
    def max_retry_wait(self) -> float:
        raise NotImplementedError

    def bucket_for(self, method: str, path: str) -> str:
        raise NotImplementedError

    def _limiter(self, bucket: str) -> Limiter:
        raise NotImplementedError

    def parse_error(self, method: str, path: str, response: requests.Response) -> SequencesApiError:
        raise NotImplementedError

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


class PageGuard:
    """Stops a paged read the answers contradict, which would otherwise never end or skip
    items: a page seen before, a page longer than asked for, or an empty page while the
    service says more follow (``hasMore``, or a ``total`` past what arrived).

    :param hook: the hook reading, for its errors.
    :param path: the endpoint paged.
    :param page_size: the largest page asked for.
    """

    def __init__(self, hook: Transport, path: str, page_size: int) -> None:
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
