"""Read-only ground truth over HTTP, under ``/_sim/``, for a simulator in another process.

A test that runs the simulators with ``python -m airflow_provider_sequences.testing`` (say, a
real Airflow deployment's) cannot read ``sim.enrolments`` in memory; it asks:

- ``GET /_sim/enrolments``: ``{"enrolments": [[sequence, contact, times], ...]}``, how many
  times each contact was put into each sequence;
- ``GET /_sim/requests?offset=N``: ``{"requests": [...], "next_offset": M}``, the request log
  from position N (method, path, status, items, fault, at: never headers, so never keys).

These paths bypass fault injection and the rate limits, and are not logged. The simulators
bind to loopback only and hold fake keys and synthetic contacts, so nothing here is secret.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from airflow_provider_sequences.testing.faults import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from airflow_provider_sequences.testing.base import Simulator

PREFIX = "/_sim/"


class GroundTruthApp:
    """ASGI middleware answering ``/_sim/`` paths from the simulator; the rest goes to ``app``."""

    def __init__(self, simulator: Simulator, app: ASGIApp) -> None:
        self.simulator = simulator
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        status, body = self._answer(scope)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope: Scope) -> tuple[int, bytes]:
        if scope["method"] != "GET":
            return 405, msgspec.json.encode({"error": "the ground truth is read-only: GET only"})
        name = scope["path"][len(PREFIX) :].strip("/")
        query = parse_qs(scope.get("query_string", b"").decode())
        content: dict[str, Any]
        if name == "enrolments":
            enrolments: dict[tuple[Any, Any], int] = getattr(self.simulator, "enrolments", {})
            content = {
                "enrolments": [[sequence, contact, n] for (sequence, contact), n in enrolments.items()]
            }
        elif name == "requests":
            try:
                offset = max(int(query.get("offset", ["0"])[0]), 0)
            except ValueError:
                return 400, msgspec.json.encode({"error": "offset must be an integer"})
            records = self.simulator.requests
            content = {"requests": [asdict(r) for r in records[offset:]], "next_offset": len(records)}
        else:
            return 404, msgspec.json.encode({"error": f"no ground truth at {scope['path']}"})
        return 200, msgspec.json.encode(content)
