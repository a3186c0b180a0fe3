"""Every exception the provider raises, under one base class, :class:`SequencesError`.

Plain Python (no Airflow), so the sync engine raises and catches them too. The operators raise
configuration errors as Airflow's ``AirflowFailException`` too, so that a task that cannot
pass is not retried (see :mod:`airflow_provider_sequences.operators.base`)."""

from __future__ import annotations

from typing import Any


class SequencesError(Exception):
    """Base of every exception this provider raises."""


class SequencesApiError(SequencesError):
    """A call to a sequence service failed.

    Carries what a person needs to act on the failure and never the API key: the service,
    the request's method and path, the HTTP status (``None`` when no answer came back), the
    service's error code and detail, and its field errors.

    :param service: ``"Reply"`` or ``"Whippy"``.
    :param method: HTTP method of the failed request.
    :param path: path of the failed request, without host or query string.
    :param status: HTTP status, or ``None`` when the connection failed.
    :param code: the service's error slug (Reply's ``code``), if it gave one.
    :param detail: the service's human-readable explanation.
    :param errors: field errors, each ``{"field": ..., "detail": ...}``.
    :param retry_after: seconds the service asked to wait before retrying (429s).
    """

    def __init__(
        self,
        *,
        service: str,
        method: str,
        path: str,
        status: int | None,
        code: str | None = None,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after
        super().__init__(self._message())

    def _message(self) -> str:
        what = f"{self.status}" if self.status is not None else "no answer"
        if self.code:
            what += f" ({self.code})" if self.status is None else f" {self.code}"
        message = f"{self.service} API {self.method} {self.path} failed: {what}"
        if self.detail:
            message += f": {self.detail}"
        if self.errors:
            fields = "; ".join(f"{e.get('field') or '?'}: {e.get('detail') or ''}" for e in self.errors[:10])
            more = f" (+{len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
            message += f" [{fields}{more}]"
        return message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor: make the exception survive pickling across processes.
        return (_rebuild, (self.__class__, self.__dict__.copy()))

    @property
    def is_rate_limited(self) -> bool:
        return self.status == 429

    @property
    def is_retryable(self) -> bool:
        """A later identical request may succeed: throttling, server errors, lost connections."""
        return self.status is None or self.status == 429 or self.status >= 500

    @property
    def rejects_request(self) -> bool:
        """The service refused the request's content as a whole (400 or 422)."""
        return self.status in (400, 422)


class OutcomeUnknownError(SequencesApiError):
    """A write was sent but its answer was lost (dropped connection, read timeout).

    The service may or may not have applied it. Writes that are not safe to repeat are not
    retried blindly; the caller should read the state back to learn what happened.
    """


class UnexpectedAnswerError(SequencesApiError):
    """The service answered, but not in a shape the provider knows: an empty body, ``null``,
    ``{}``, missing ids, values of the wrong type, an answer too large, a 202 without the job
    it announces, pages that contradict each other.

    Transient: the batch becomes ``requestFailed`` and a later run sends it again; it is never
    a verdict about the contacts. The detail describes the answer's shape, never its values.
    """

    @property
    def is_retryable(self) -> bool:
        return True

    @property
    def rejects_request(self) -> bool:
        return False


class RetryWaitTooLongError(SequencesApiError):
    """The service asked to wait longer before retrying than the connection's
    ``max_retry_wait`` allows; the run stops (every outcome recorded) and a later run resumes."""

    @property
    def is_retryable(self) -> bool:
        return False


def _rebuild(cls: type[SequencesApiError], state: dict[str, Any]) -> SequencesApiError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error._message())
    return error


class SyncConfigurationError(SequencesError, ValueError):
    """The task's settings cannot work: a sequence that does not exist or is a draft, an
    unknown step or channel, an unknown field in ``column_map``. Nothing was sent."""


class SyncAbortedError(SequencesError, RuntimeError):
    """The service refused the whole run (a bad key, a missing scope, a sequence gone).

    Raised after every outcome so far was recorded, so a retry resumes where this stopped.
    """


class ScopeBusyError(SequencesError, RuntimeError):
    """Another run still syncs this sequence of this account after ``lock_timeout``; this
    run sent nothing.

    :param holder: the id of the run holding the scope.
    """

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_busy, (str(self), self.holder))


class SyncFailedError(SequencesError, RuntimeError):
    """Too many rows were not processed (``max_not_processed_share``); the result was still
    pushed to XCom."""


class SourceError(SequencesError, ValueError):
    """The source could not be read; the message says what and where, for a person to act on."""


def _rebuild_busy(message: str, holder: str) -> ScopeBusyError:
    return ScopeBusyError(message, holder=holder)


class StateSchemaError(SequencesError, RuntimeError):
    """The sync state's schema cannot be used by this provider (it is newer, or unknown)."""
