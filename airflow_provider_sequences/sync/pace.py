"""A run's pace: the requests it spent, how long it took, and the least time the service's
documented rate limits allow for those requests (its floor).

The runs table keeps one per run (see :mod:`.state`), so the Sequence syncs view can chart a
run's requests against its floor: a run far above its floor spent its time elsewhere (reading
the export, waiting for the service), one at its floor was held by the limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def floor_seconds(requests: int, limits: Iterable[tuple[int, float]]) -> float:
    """Least time from the first to the last of ``requests`` under sliding-window limits
    (``count`` requests per ``seconds``): the last can leave only once every window before it
    has passed."""
    if requests <= 1:
        return 0.0
    return max(((requests - 1) // count * seconds for count, seconds in limits), default=0.0)


@dataclass(frozen=True)
class RunPace:
    """What a run spent: requests (reads and writes), its duration, and its floor, in seconds."""

    write_requests: int
    read_requests: int
    seconds: float
    floor_seconds: float

    @property
    def requests(self) -> int:
        return self.write_requests + self.read_requests

    def __add__(self, other: RunPace) -> RunPace:
        """Two parts of one run (a deferred task and its resumption). The sum of their floors is
        at most the whole's floor: never a floor the run could not have met."""
        return RunPace(
            self.write_requests + other.write_requests,
            self.read_requests + other.read_requests,
            self.seconds + other.seconds,
            self.floor_seconds + other.floor_seconds,
        )
