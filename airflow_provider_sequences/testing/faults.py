"""Seeded fault injection and the request log, as ASGI middleware shared by both simulators.

Faults act where a real network and a real service fail: before the request reaches the
service (5xx, 429 bursts, connection resets, latency) or after the service applied it (a lost
response: the write happened, the client never hears of it).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FaultKind = Literal["server_error", "rate_limit", "reset", "lost_response"]

#: A canned response: status, headers, body bytes.
CannedResponse = tuple[int, list[tuple[bytes, bytes]], bytes]


@dataclass
class FaultPlan:
    """How often each fault strikes; all rates are probabilities per request.

    :param seed: seed of the random generator, so a faulty run can be replayed.
    :param server_error_rate: answer 500 without touching the service state.
    :param rate_limit_rate: start a burst of ``rate_limit_burst`` consecutive 429s.
    :param rate_limit_burst: how many requests in a row a burst refuses.
    :param rate_limit_wait: the real seconds an injected 429 asks the client to wait.
    :param reset_rate: drop the connection before the service sees the request.
    :param lost_response_rate: apply the request, then drop the connection.
    :param latency: a random delay in real seconds, uniform between the two bounds.
    """

    seed: int | None = None
    server_error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    rate_limit_burst: int = 3
    rate_limit_wait: float = 0.05
    reset_rate: float = 0.0
    lost_response_rate: float = 0.0
    latency: tuple[float, float] = (0.0, 0.0)


@dataclass
class RequestRecord:
    """One request as the simulator saw it (never its headers, so never the API key)."""

    method: str
    path: str
    status: int | None
    items: int | None
    fault: str | None
    at: float = field(default_factory=time.time)


class ConnectionDropped(Exception):
    """Raised inside the ASGI app so uvicorn closes the connection mid-response."""


class FaultInjector:
    """ASGI middleware: injects faults and records every request.

    :param app: the simulator's ASGI app.
    :param rate_limited: builds the service's own 429 answer for a wait in seconds.
    :param server_error: builds the service's own 500 answer.
    """

    def __init__(
        self,
        app: ASGIApp,
        rate_limited: Callable[[float], CannedResponse],
        server_error: Callable[[], CannedResponse],
    ) -> None:
        self.app = app
        self.plan = FaultPlan()
        self._rate_limited = rate_limited
        self._server_error = server_error
        self._random = random.Random()
        self._forced: deque[FaultKind | None] = deque()
        self._burst_left = 0
        self._lock = threading.Lock()
        self.log: list[RequestRecord] = []

    def configure(self, plan: FaultPlan) -> None:
        """Replace the fault plan (and reseed the generator)."""
        with self._lock:
            self.plan = plan
            self._random = random.Random(plan.seed)
            self._burst_left = 0

    def force(self, *kinds: FaultKind | None) -> None:
        """Make the next requests meet these faults, in order (``None``: no fault)."""
        with self._lock:
            self._forced.extend(kinds)

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def dump_log(self, path: str | Path) -> None:
        """Write the request log as JSON Lines."""
        with self._lock:
            lines = [json.dumps(asdict(record)) for record in self.log]
        Path(path).write_text("".join(line + "\n" for line in lines))

    def _draw(self) -> tuple[FaultKind | None, float]:
        with self._lock:
            low, high = self.plan.latency
            delay = self._random.uniform(low, high) if high > 0 else 0.0
            if self._forced:
                return self._forced.popleft(), delay
            if self._burst_left > 0:
                self._burst_left -= 1
                return "rate_limit", delay
            roll = self._random.random()
            plan = self.plan
            for kind, rate in (
                ("server_error", plan.server_error_rate),
                ("rate_limit", plan.rate_limit_rate),
                ("reset", plan.reset_rate),
                ("lost_response", plan.lost_response_rate),
            ):
                if roll < rate:
                    if kind == "rate_limit":
                        self._burst_left = max(plan.rate_limit_burst - 1, 0)
                    return kind, delay  # type: ignore[return-value]
                roll -= rate
            return None, delay

    def _record(self, scope: Scope, status: int | None, fault: str | None) -> None:
        items = scope.get("state", {}).get("items")
        with self._lock:
            self.log.append(RequestRecord(scope["method"], scope["path"], status, items, fault))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        fault, delay = self._draw()
        if delay:
            await asyncio.sleep(delay)
        if fault == "reset":
            self._record(scope, None, fault)
            await _drop(send)
        if fault in ("server_error", "rate_limit"):
            canned = (
                self._server_error()
                if fault == "server_error"
                else self._rate_limited(self.plan.rate_limit_wait)
            )
            self._record(scope, canned[0], fault)
            await _send_canned(send, canned)
            return
        status: list[int] = []
        recorded = False

        async def capture(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Logged before the last byte goes out: a client that has its answer can
                # already see its request in the log.
                self._record(scope, status[0] if status else None, fault)
                recorded = True
            if fault != "lost_response":
                await send(message)

        await self.app(scope, receive, capture)
        if not recorded:
            self._record(scope, status[0] if status else None, fault)
        if fault == "lost_response":
            await _drop(send)


async def _send_canned(send: Send, canned: CannedResponse) -> None:
    status, headers, body = canned
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    # Headers promise a body that never comes: the client sees the connection break.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1048576")]})
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
    raise ConnectionDropped("simulated dropped connection")
