"""Personal values as the view shows them: emails and phone numbers masked (``a•••@example.com``).

Keys are often emails or phones, and a not-processed row's detail may quote the bad value, so
both pass through :func:`mask_text` unless the deployment sets
``[sequences] reveal_personal_values = True``.
"""

from __future__ import annotations

import re

# One or more @: a malformed address ("bob@@x.io") is masked too.
_EMAIL = re.compile(r"([^\s@'\"<>(),;:]+)@+([^\s'\"<>(),;:]+)")
# A run of at least 7 digits, with the separators people write phone numbers with.
_PHONE = re.compile(r"\+?\d[\d ().\-]{5,}\d")
DOT = "\u2022"


def _email(match: re.Match[str]) -> str:
    local, domain = match.group(1), match.group(2)
    return f"{local[:1]}{DOT * 3}@{domain}"


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    if digits < 7:
        return text
    head = "+" if text.startswith("+") else ""
    return f"{head}{DOT * 3}{text[-2:]}"


def mask_text(text: str | None, *, reveal: bool = False) -> str:
    """Emails and phone numbers in ``text`` masked; the rest as it is."""
    if not text:
        return ""
    if reveal:
        return text
    return _PHONE.sub(_phone, _EMAIL.sub(_email, text))
