"""What both simulators share: an in-memory service behind a real HTTP server on loopback."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, TypeVar

import msgspec
from starlette.responses import Response

# Re-exported: the behaviours are part of the simulators' API.
from airflow_provider_sequences.testing.behaviour import BEHAVIOURS as BEHAVIOURS
from airflow_provider_sequences.testing.behaviour import DEFAULT_BEHAVIOUR as DEFAULT_BEHAVIOUR
from airflow_provider_sequences.testing.behaviour import Behaviour as Behaviour
from airflow_provider_sequences.testing.behaviour import check_behaviour as check_behaviour
from airflow_provider_sequences.testing.faults import CannedResponse, FaultInjector, RequestRecord
from airflow_provider_sequences.testing.ratelimit import SimClock, SlidingWindowLimiter
from airflow_provider_sequences.testing.server import SimulatorServer


def json_response(content: dict[str, Any]) -> Response:
    """A 200 answer of plain JSON values, encoded by msgspec: returning the dict would send
    it through FastAPI's jsonable_encoder, which walks every one of 1,000 items in Python.
    The bytes are JSONResponse's (compact, UTF-8)."""
    return Response(msgspec.json.encode(content), media_type="application/json")


_S = TypeVar("_S", bound="Simulator")


class Simulator(ABC):
    """Base of the service simulators.

    Subclasses hold the service's state (guarded by ``self.lock``), build its FastAPI app and
    say how the service answers a 429 and a 500. The base wraps the app in fault injection and
    the request log, and serves it.

    :param time_scale: simulated seconds per real second for the rate limits; 60 makes a
        per-minute limit a per-second one.
    :param enforce_rate_limits: refuse requests over the documented limits with 429s.
    :param behaviour: ``documented`` (the reference docs) or ``observed`` (what the service's
        own clients report); see :data:`Behaviour`.
    """

    def __init__(
        self,
        *,
        time_scale: float = 1.0,
        enforce_rate_limits: bool = True,
        behaviour: Behaviour = DEFAULT_BEHAVIOUR,
    ) -> None:
        self.behaviour: Behaviour = check_behaviour(behaviour)
        self.clock = SimClock(time_scale)
        self.limiter = SlidingWindowLimiter(self.clock)
        self.enforce_rate_limits = enforce_rate_limits
        self.lock = threading.RLock()
        self.faults = FaultInjector(self.build_app(), self.rate_limited_response, self.server_error_response)
        self._server: SimulatorServer | None = None

    @abstractmethod
    def build_app(self) -> Any:
        """The service's ASGI app (FastAPI)."""

    @abstractmethod
    def rate_limited_response(self, wait_seconds: float) -> CannedResponse:
        """The service's own 429 answer asking to wait ``wait_seconds`` real seconds."""

    @abstractmethod
    def server_error_response(self) -> CannedResponse:
        """The service's own 500 answer."""

    @property
    def observed(self) -> bool:
        """Whether the simulator answers as the service's own clients report it does."""
        return self.behaviour == "observed"

    @property
    def time_scale(self) -> float:
        return self.clock.time_scale

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received so far, oldest first (a copy)."""
        with self.faults._lock:
            return list(self.faults.log)

    def start(self: _S, host: str = "127.0.0.1", port: int = 0) -> _S:
        """Serve on loopback in a background thread; ``port=0`` picks a free port."""
        self._server = SimulatorServer(self.faults, host=host, port=port).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def url(self) -> str:
        """Base URL of the running simulator (what a connection's host should be)."""
        if self._server is None:
            raise RuntimeError("the simulator is not running: call start() first")
        return self._server.url

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
