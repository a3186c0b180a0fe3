"""Masking people's values (emails, phones, names) in what the provider stores and shows.

Used for the details of not-processed keys when ``mask_values`` is on, for what the logs say,
and by the Sequence syncs view for keys and details (unless the run's operator set
``reveal_values``): one place decides what a masked value looks like.

- an email keeps its first character and its domain: ``a•••@example.com``;
- a phone keeps its country code and its last four digits (two when it is short):
  ``+1 ••• 0123``: enough to find the row in the CRM, not enough to call it;
- anything else keeps its first character: ``A•••``.
"""

from __future__ import annotations

import re

import phonenumbers

MASK = "•••"

# An email anywhere in a text, quoted or not; malformed ones too ("ada@example", "bob@@x.io"):
# a refused address is exactly what a not-processed key's detail quotes. Something before the
# @ is needed: validators' messages speak of "an @-sign".
_EMAIL = re.compile(r"[^\s'\"<>(),;:\[\]{}@]+@+[^\s'\"<>(),;:\[\]{}@]+")
# Phone-like runs: with a leading +, grouped like a national number ("415 555 0123",
# "07700 900123"), or a long bare run of digits.
# Row numbers and counts ("row 1000000", "4,000 contacts") are not matched.
_PHONE = re.compile(
    r"\+\d[\d\s().-]{4,}\d"
    r"|(?<![\w-])\(?\d{2,5}\)?[\s.-]\d{3,4}[\s.-]?\d{3,4}(?![\w-])"
    r"|(?<![\w-])\d{10,15}(?![\w-])"
)
_PHONE_CHARACTERS = frozenset("+0123456789 ()-./")


def mask_email(value: str) -> str:
    """``ada@example.com`` -> ``a•••@example.com``."""
    local, _, domain = value.rpartition("@")
    local = local.rstrip("@")
    return f"{local[:1]}{MASK}@{domain}"


def mask_phone(value: str) -> str:
    """``+1 415 555 0123`` -> ``+1 ••• 0123``."""
    digits = "".join(ch for ch in value if ch.isdigit())
    keep = 4 if len(digits) >= 9 else 2
    tail = digits[-keep:] if len(digits) > keep else ""
    country = ""
    if value.lstrip().startswith("+"):
        try:
            country = f"+{phonenumbers.parse(value, None).country_code} "
        except phonenumbers.NumberParseException:
            country = "+"
    return f"{country}{MASK} {tail}".rstrip()


def mask_value(value: object) -> str:
    """A value as it may be shown when values are masked."""
    text = "" if value is None else str(value).strip()
    if not text:
        return text
    if "@" in text:
        return mask_email(text)
    if sum(ch.isdigit() for ch in text) >= 5 and set(text) <= _PHONE_CHARACTERS:
        return mask_phone(text)
    return f"{text[:1]}{MASK}"


def mask_text(text: str) -> str:
    """A free text (a service's answer, a detail) with every email and phone number in it masked.

    Column names, reasons and counts are left as they are; values quoted in full by the
    provider's own checks are masked where they are made (they know which part is the value).
    """
    text = _EMAIL.sub(lambda match: mask_email(match.group()), text)
    return _PHONE.sub(lambda match: mask_phone(match.group()), text)


def mask_quoted(detail: str, value: object, column: str) -> str:
    """A check's detail about ``value`` of ``column``: the value masked, the column named."""
    if value is not None and str(value):
        detail = detail.replace(repr(str(value)), repr(mask_value(value)))
    return f"column {column!r}: {mask_text(detail)}"
