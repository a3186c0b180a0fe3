"""What a contract check saw: a verdict per assumption, and the shapes of the answers.

The :class:`Recorder` sits on a hook's ``requests`` session as a response hook, so it sees every
answer the real hook gets (retries and 429s included) without changing how the hook sends.
Answers are kept in memory for the checks to judge; only their shapes leave the process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import requests

from airflow_provider_sequences import __version__
from airflow_provider_sequences.check.shapes import Shape, merge, shape_of

if TYPE_CHECKING:
    from airflow_provider_sequences.hooks.base import SequencesHook

#: Headers whose presence (never their value) says something about the contract.
_HEADERS_OF_INTEREST = re.compile(
    r"^(retry-after|x-ratelimit.*|ratelimit.*|www-authenticate|location)$", re.I
)


class Verdict(str, Enum):
    HELD = "held"
    VIOLATED = "violated"
    NOT_SEEN = "not seen"


@dataclass(frozen=True)
class Finding:
    """One assumption of the sync and what the service showed about it."""

    id: str
    verdict: Verdict
    explanation: str


@dataclass
class Exchange:
    """One answer as the hook received it (kept in memory only)."""

    label: str
    status: int
    headers: requests.structures.CaseInsensitiveDict[str]
    body: Any
    is_json: bool

    @property
    def media_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()


@dataclass
class _EndpointShapes:
    statuses: set[int] = field(default_factory=set)
    media_types: set[str] = field(default_factory=set)
    headers: set[str] = field(default_factory=set)
    bodies: dict[str, Shape] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "statuses": sorted(self.statuses),
            "content_types": sorted(self.media_types),
            "headers": sorted(self.headers),
            "bodies": dict(sorted(self.bodies.items())),
        }


class Recorder:
    """Collects every answer a hook's session receives, labelled with the endpoint asked."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self._label = "other"
        self._shapes: dict[str, _EndpointShapes] = {}

    def attach(self, hook: SequencesHook) -> None:
        hook.answer_observers.append(self._on_response)

    @contextmanager
    def endpoint(self, label: str) -> Iterator[list[Exchange]]:
        """Label the answers received inside the block (``"GET /v3/sequences/{id}"``); yields
        the list those answers are appended to."""
        saved, self._label = self._label, label
        start = len(self.exchanges)
        seen: list[Exchange] = []
        try:
            yield seen
        finally:
            seen.extend(self.exchanges[start:])
            self._label = saved

    def _on_response(self, response: requests.Response) -> requests.Response:
        body: Any = None
        is_json = False
        if response.content:
            try:
                body, is_json = json.loads(response.content), True
            except ValueError:
                body = None
        exchange = Exchange(self._label, response.status_code, response.headers, body, is_json)
        self.exchanges.append(exchange)
        shapes = self._shapes.setdefault(self._label, _EndpointShapes())
        shapes.statuses.add(response.status_code)
        if exchange.media_type:
            shapes.media_types.add(exchange.media_type)
        shapes.headers.update(name.lower() for name in response.headers if _HEADERS_OF_INTEREST.match(name))
        status = str(response.status_code)
        shape = shape_of(body) if is_json else {"type": ["empty" if not response.content else "not JSON"]}
        shapes.bodies[status] = merge(shapes.bodies[status], shape) if status in shapes.bodies else shape
        return response

    def shapes(self) -> dict[str, Any]:
        return {label: shapes.to_json() for label, shapes in sorted(self._shapes.items())}


class Report:
    """The findings of one check run, printed for a person and written as shapes for a bug report."""

    def __init__(self, service: str, recorder: Recorder) -> None:
        self.service = service
        self.recorder = recorder
        self.findings: list[Finding] = []
        self.notes: list[str] = []

    def held(self, id: str, explanation: str) -> None:
        self.findings.append(Finding(id, Verdict.HELD, explanation))

    def violated(self, id: str, explanation: str) -> None:
        self.findings.append(Finding(id, Verdict.VIOLATED, explanation))

    def not_seen(self, id: str, explanation: str) -> None:
        self.findings.append(Finding(id, Verdict.NOT_SEEN, explanation))

    def judge(self, id: str, ok: bool, held: str, violated: str) -> bool:
        """Held with ``held`` when ``ok``, else violated with ``violated``; returns ``ok``."""
        (self.held if ok else self.violated)(id, held if ok else violated)
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)

    def verdict(self, id: str) -> Verdict | None:
        return next((f.verdict for f in self.findings if f.id == id), None)

    @property
    def any_violated(self) -> bool:
        return any(f.verdict is Verdict.VIOLATED for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {v.value: sum(f.verdict is v for f in self.findings) for v in Verdict}

    def print(self, out: TextIO) -> None:
        width = max((len(f.id) for f in self.findings), default=0)
        for finding in self.findings:
            print(f"  {finding.verdict.value:<9} {finding.id:<{width}}  {finding.explanation}", file=out)
        for text in self.notes:
            print(f"  note: {text}", file=out)
        counts = self.counts()
        print(
            f"{counts['held']} held, {counts['violated']} violated, {counts['not seen']} not seen",
            file=out,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "assumptions": [
                {"id": f.id, "verdict": f.verdict.value, "explanation": f.explanation} for f in self.findings
            ],
            "endpoints": self.recorder.shapes(),
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
