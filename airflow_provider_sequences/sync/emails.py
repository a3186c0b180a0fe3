"""Email normalisation: lowercase, then check.

An address in the plain ASCII form almost every address has is accepted by a regular expression
stricter than email-validator; email-validator sees only the rest, each distinct value once.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from airflow_provider_sequences.sync.text import (
    CheckedColumn,
    bool_mask,
    text_lengths,
    to_objects,
    valid_mask,
)

_ATEXT = r"[a-z0-9_!#$%&'*+/=?^`{|}~-]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TOP_LABEL = r"(?:[a-z0-9][a-z0-9-]{0,61})?[a-z]"
#: Lowercase ASCII addresses that email-validator certainly accepts unchanged.
EMAIL_FAST_PATTERN = rf"^{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+{_TOP_LABEL}$"
#: ... except these: "--" in the domain (IDNA rules), and special-use domains.
EMAIL_SLOW_PATTERN = (
    r"@.*--|[@.](?:" + "|".join(name.replace(".", r"\.") for name in SPECIAL_USE_DOMAIN_NAMES) + r")$"
)
_EMAIL_MAX_LENGTH = 254


def normalise_emails(text: pa.Array) -> CheckedColumn:
    """Lowercase and check every email; email-validator sees only the unusual ones."""
    size = len(text)
    values: npt.NDArray[np.object_] = np.full(size, None, dtype=object)
    bad = np.zeros(size, dtype=bool)
    details: dict[int, str] = {}
    present = valid_mask(text)
    lowered = pc.ascii_lower(text)
    fast = (
        present
        & bool_mask(pc.string_is_ascii(text))
        & bool_mask(pc.match_substring_regex(lowered, EMAIL_FAST_PATTERN))
        & ~bool_mask(pc.match_substring_regex(lowered, EMAIL_SLOW_PATTERN))
        & (text_lengths(text) <= _EMAIL_MAX_LENGTH)
    )
    if fast.any():
        values[fast] = to_objects(lowered.filter(pa.array(fast)))
    slow = np.flatnonzero(present & ~fast)
    if slow.size:
        originals = text.take(pa.array(slow)).to_pylist()
        checked = {value: check_email(value) for value in dict.fromkeys(originals)}
        for position, value in zip(slow.tolist(), originals, strict=True):
            normalised, problem = checked[value]
            if problem is None:
                values[position] = normalised
            else:
                bad[position] = True
                details[position] = problem
    return CheckedColumn(values, bad, details)


@functools.lru_cache(maxsize=1 << 16)
def check_email(value: str) -> tuple[str | None, str | None]:
    """One email through email-validator: ``(normalised, None)`` or ``(None, problem)``."""
    try:
        info = validate_email(value.lower(), check_deliverability=False)
    except EmailNotValidError as error:
        return None, f"{value!r} is not a valid email: {error}"
    return info.normalized, None
