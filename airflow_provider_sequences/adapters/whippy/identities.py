"""What identifies a Whippy contact in a read-back: its phone, lowercase email and external id."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: Separates the parts of a stored identity (see :func:`whippy_identity`).
_SEP = "\x1f"

#: What identifies a pending contact in a read-back: its (E.164 phone, lowercase email, external
#: id), any of them ``None``. Whippy's step contacts may not show an external id (its own
#: client receives ``contact: {id, name, email, phone}``), so the phone and the email are
#: always kept; the external id counts only when a step contact shows one.
WhippyIdentity = tuple[str | None, str | None, str | None]


def row_identities(
    keys: Sequence[str | None], columns: Mapping[str, list[Any]]
) -> Iterator[str | WhippyIdentity | None]:
    """The identity of every row, from the batch's columns: one string,
    ``phone<US>email<US>external_id`` (a run may hold a million pending keys: a string costs a
    third of a tuple of three), or the tuple when a value holds the separator."""
    missing = [None] * len(keys)
    external_ids = columns.get("external_id", missing)
    phones = columns.get("phone", missing)
    emails = columns.get("email", missing)
    for external_id, phone, email in zip(external_ids, phones, emails, strict=True):
        if phone is None and email is None and external_id is None:
            yield None
            continue
        parts = (
            "" if phone is None else str(phone),
            "" if email is None else str(email).lower(),
            "" if external_id is None else str(external_id),
        )
        if any(_SEP in part for part in parts):
            yield parts[0] or None, parts[1] or None, parts[2] or None
        else:
            yield _SEP.join(parts)


def whippy_identity(value: Any) -> WhippyIdentity | None:
    """An identity as (phone, lowercase email, external id), from what :func:`row_identities`
    makes and the state stores: the joined string, the list JSON makes of a triple, and the forms
    of earlier versions (an external id alone, a (phone, email) pair, a ``{phone, email,
    external_id}`` dict)."""
    if isinstance(value, str):
        if _SEP in value:
            parts = value.split(_SEP, 2)
            return parts[0] or None, parts[1] or None, parts[2] or None
        return (None, None, value) if value else None
    if isinstance(value, tuple) and len(value) == 3:
        return value  # as :func:`row_identities` made it (lowering the email again would copy it)
    if isinstance(value, Mapping):
        value = (value.get("phone"), value.get("email"), value.get("external_id"))
    if isinstance(value, (list, tuple)) and len(value) in (2, 3):
        phone = str(value[0]) if value[0] else None
        email = str(value[1]).lower() if value[1] else None
        external_id = str(value[2]) if len(value) == 3 and value[2] else None
        return (phone, email, external_id) if phone or email or external_id else None
    return None
