"""Sliding-window rate limits as the services enforce them, with a time scale for tests."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """At most ``requests`` in any window of ``period`` seconds (simulated time)."""

    requests: int
    period: float


class SimClock:
    """Simulated time: ``time_scale`` simulated seconds pass per real second.

    With ``time_scale=60`` a rate-limit "minute" lasts one real second, so tests can exercise
    per-minute and per-hour limits quickly. A test that counts requests inside one window
    freezes the clock (:meth:`freeze`), so a slow machine cannot stretch the window, and
    moves it on by hand (:meth:`advance`).
    """

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._frozen_at: float | None = None

    def now(self) -> float:
        """Simulated seconds on a monotonic clock."""
        if self._frozen_at is not None:
            return self._frozen_at
        return time.monotonic() * self.time_scale

    def freeze(self) -> None:
        """Stop simulated time where it is, until :meth:`advance` moves it."""
        self._frozen_at = self.now()

    def advance(self, real_seconds: float) -> None:
        """Move a frozen clock on by ``real_seconds`` (scaled like the running clock)."""
        if self._frozen_at is None:
            raise RuntimeError("only a frozen clock is advanced by hand")
        self._frozen_at += real_seconds * self.time_scale

    def to_real(self, simulated_seconds: float) -> float:
        """Convert a simulated duration into real seconds."""
        return simulated_seconds / self.time_scale


class SlidingWindowLimiter:
    """Counts requests per (identity, bucket) over sliding windows, thread-safe."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._hits: dict[tuple[str, str, float], deque[float]] = defaultdict(deque)

    def hit(self, identity: str, bucket: str, limits: list[Limit]) -> float:
        """Record one request if every limit allows it.

        Returns 0.0 when the request is allowed, otherwise the real seconds to wait until it
        would be (nothing is recorded for a refused request, as the services do not count 429s).
        """
        now = self.clock.now()
        with self._lock:
            wait = 0.0
            windows = []
            for limit in limits:
                hits = self._hits[(identity, bucket, limit.period)]
                while hits and hits[0] <= now - limit.period:
                    hits.popleft()
                if len(hits) >= limit.requests:
                    wait = max(wait, hits[len(hits) - limit.requests] + limit.period - now)
                windows.append(hits)
            if wait > 0:
                return self.clock.to_real(wait)
            for hits in windows:
                hits.append(now)
            return 0.0
