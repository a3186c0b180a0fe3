"""The simulators' two behaviours (kept apart from the simulators, which load FastAPI)."""

from __future__ import annotations

from typing import Literal, get_args

#: How a simulator answers: ``documented`` follows the services' reference docs;
#: ``observed`` does what the services' own clients report the real servers do (the
#: "added 2026-12" sections of the API notes). The sync must be correct under both.
Behaviour = Literal["documented", "observed"]
BEHAVIOURS: tuple[Behaviour, ...] = get_args(Behaviour)
DEFAULT_BEHAVIOUR: Behaviour = "documented"


def check_behaviour(value: str) -> Behaviour:
    """``value`` as a :data:`Behaviour`, or ``ValueError`` naming the choices."""
    if value not in BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}, not {value!r}")
    return value  # type: ignore[return-value]
