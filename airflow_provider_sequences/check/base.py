"""What the Reply.io and Whippy checks share: calls through the real hook, labelled and
recorded, and the judgements that read the same way for both services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from airflow_provider_sequences.check.report import Exchange, Report
from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.base import SequencesHook

#: A key no service ever issued: what the wrong-key probe sends.
WRONG_KEY = "sequences-contract-check-wrong-key"

H = TypeVar("H", bound=SequencesHook)


class CheckAborted(Exception):
    """The check cannot go on: no answer, or the key itself refused. Exit status 2."""


class Call:
    """What one call through the hook gave: its result or its error, and every answer seen."""

    def __init__(self, result: Any, error: SequencesApiError | None, exchanges: list[Exchange]) -> None:
        self.result = result
        self.error = error
        self.exchanges = exchanges

    @property
    def last(self) -> Exchange | None:
        return self.exchanges[-1] if self.exchanges else None

    @property
    def status(self) -> int | None:
        return self.last.status if self.last is not None else None

    @property
    def body(self) -> Any:
        return self.last.body if self.last is not None else None

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        """Status and the service's error code, never its free text (which may quote data)."""
        if self.error is None:
            return f"answered {self.status}"
        if self.error.status is None:
            return f"got no answer ({self.error.code or 'connection failed'})"
        code = f" {self.error.code}" if self.error.code else ""
        return f"answered {self.error.status}{code}"


class ServiceCheck(Generic[H]):
    """Runs one service's checks through ``hook``, recording every answer in ``report``."""

    service = ""

    def __init__(self, hook: H, report: Report, *, probes: bool = True) -> None:
        self.hook = hook
        self.report = report
        self.recorder = report.recorder
        self.probes = probes
        self.recorder.attach(hook)

    def run(self) -> None:
        """Run every check, adding findings to the report."""
        raise NotImplementedError

    def call(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
        """Call a hook method with its answers labelled ``label``."""
        with self.recorder.endpoint(label) as seen:
            try:
                result, error = fn(*args, **kwargs), None
            except SequencesApiError as exc:
                result, error = None, exc
        return Call(result, error, seen)

    def first_call(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
        """The first authenticated call: no answer, or a refused key, ends the check."""
        call = self.call(label, fn, *args, **kwargs)
        if call.error is not None and call.error.status is None:
            raise CheckAborted(f"could not reach {self.hook.hook_name} at {self.hook.base_url}: {call.error}")
        if call.error is not None and call.error.status == 401:
            raise CheckAborted(
                f"{self.hook.hook_name} refused the API key (401): check the connection's password"
            )
        return call

    def wrong_key_hook(self) -> H:
        """A hook for the same connection that sends a key no service issued."""
        hook = type(self.hook)(self.hook.conn_id)
        # Set before the session is built, so its auth header carries the wrong key.
        hook.__dict__["api_key"] = WRONG_KEY
        self.recorder.attach(hook)
        return hook

    # -- judgements both services share ------------------------------------------------------

    def judge_rate_limit_header(self, header: str, what: str) -> None:
        """Every 429 seen carried ``header`` with a number."""
        throttled = [e for e in self.recorder.exchanges if e.status == 429]
        if not throttled:
            self.report.not_seen(
                "rateLimit.header",
                f"no 429 during the check; the sync waits what {header} says when one comes",
            )
            return
        good = [e for e in throttled if _is_number(e.headers.get(header))]
        self.report.judge(
            "rateLimit.header",
            len(good) == len(throttled),
            f"{len(throttled)} answer(s) 429 carried {header} ({what})",
            f"{len(throttled) - len(good)} of {len(throttled)} answer(s) 429 lacked a numeric {header}: "
            "the hooks then back off exponentially instead of waiting what the service asks",
        )
        extra = sorted(
            {
                name
                for e in self.recorder.exchanges
                for name in e.headers
                if name.lower().startswith("x-ratelimit")
            }
        )
        if extra:
            self.report.note(f"rate-limit headers seen: {', '.join(extra)}")


def _is_number(value: str | None) -> bool:
    try:
        float(value or "")
    except ValueError:
        return False
    return True


def objects(answer: Any, key: str) -> list[dict[str, Any]]:
    """The objects of the list ``answer[key]``; none when the answer has another shape."""
    found = answer.get(key) if isinstance(answer, dict) else None
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def missing_fields(item: Any, fields: dict[str, tuple[type, ...]]) -> list[str]:
    """Fields of ``fields`` that ``item`` lacks or holds with another JSON type."""
    if not isinstance(item, dict):
        return list(fields)
    wrong = []
    for name, kinds in fields.items():
        value = item.get(name)
        if (
            name not in item
            or not isinstance(value, kinds)
            or (isinstance(value, bool) and bool not in kinds)
        ):
            wrong.append(name)
    return wrong


def first_missing(items: list[Any], fields: dict[str, tuple[type, ...]]) -> list[str]:
    """Every field some item of ``items`` lacks or holds with another type, in ``fields`` order."""
    wrong: set[str] = set()
    for item in items:
        wrong.update(missing_fields(item, fields))
    return [name for name in fields if name in wrong]
