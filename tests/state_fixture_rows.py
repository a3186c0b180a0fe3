"""The exports behind the checked-in 0.1.0 sync states (tests/fixtures/state_0_1_0/).

Shared by the script that wrote those states with provider 0.1.0 and by the upgrade test,
which runs the same exports again on the upgraded states.
"""

from __future__ import annotations

from typing import Any

#: Reply: 8 enrolled, 2 refused for their email, 1 without one, 1 duplicate key.
REPLY_ROWS: list[dict[str, Any]] = [
    *({"id": f"r-{i}", "email": f"reply.person{i}@example.com", "first": f"P{i}"} for i in range(8)),
    {"id": "r-bad-1", "email": "not-an-email", "first": "Bad"},
    {"id": "r-bad-2", "email": "two@@example.com", "first": "Bad"},
    {"id": "r-none", "email": None, "first": "Nobody"},
    {"id": "r-0", "email": "reply.person0@example.com", "first": "Again"},
]
REPLY_MAP = {"email": "email", "first": "firstName"}

#: Whippy: 8 accepted and left pending (not read back), 1 with a phone that is no phone.
WHIPPY_ROWS: list[dict[str, Any]] = [
    *({"id": f"w-{i}", "phone": f"+1415555{i:04d}"} for i in range(8)),
    {"id": "w-bad", "phone": "call me maybe"},
]
WHIPPY_MAP = {"id": "external_id", "phone": "phone"}

#: Keys of a batch a worker was sending when it died, in a sequence of their own.
IN_FLIGHT_KEYS = ["f-1", "f-2", "f-3"]
