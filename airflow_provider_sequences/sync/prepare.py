"""The prepare stage: one chunk of source rows becomes contacts ready to send, or rejections.

Source columns become contact fields through a column map; keys, emails, phones, integers and
lengths are checked; a row that fails any check becomes a rejection with a reason slug (see
:mod:`airflow_provider_sequences.sync.outcomes`) and a detail a person can act on. A rejected
row never raises and never affects another row.

Speed matters (a run reads millions of rows), so the work is done column by column with Arrow
string kernels. The per-value libraries are slow (about 20 µs a call), so they only see values
that a vectorised check cannot settle, and each distinct value once:

- an email in the plain ASCII form almost every address has is accepted by a regular
  expression that is stricter than email-validator; anything else goes to email-validator;
- a phone number written with digits, spaces and ``+ ( ) - . /`` is split into country code
  and national number and checked against the phonenumbers metadata patterns, for all rows of
  one country code at once, in exactly the way ``phonenumbers.is_valid_number`` checks one
  number, with a region's plain national prefix (the 0 of 020 7946 0018) stripped as parse
  strips it; a number that needs more (an international dialling prefix such as 00, a
  region's prefix transform rule, a leading zero kept as in Italy) goes to phonenumbers.

``tests/test_prepare.py`` checks both shortcuts against the libraries themselves.

No deduplication happens here: the caller does it across chunks.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumberFormat

from airflow_provider_sequences.sync import outcomes

__all__ = [
    "FieldRules",
    "PrepareSpec",
    "Prepared",
    "check_columns",
    "prepare_chunk",
    "validate_column_map",
]

Mask = npt.NDArray[np.bool_]

#: Every character ``str.strip()`` removes (``str.isspace``); Arrow's own notion differs.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

#: E.164 allows at most 15 digits; shorter than 7 is not a number a sequence can dial.
E164_MIN_DIGITS = 7
E164_MAX_DIGITS = 15

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_TEXT = pa.large_string()
_NULL_TEXT = pa.scalar(None, type=_TEXT)


@dataclass(frozen=True)
class FieldRules:
    """What a service accepts: which target fields exist and how each is checked."""

    #: Plain target fields, e.g. ``{"email", "firstName", ...}``.
    known_fields: frozenset[str]
    #: Dotted families allowed: ``{"customFields"}`` lets Reply take ``customFields.Tier``.
    prefixes: frozenset[str]
    #: Fields checked and normalised as email addresses.
    email_fields: frozenset[str]
    #: Fields checked and normalised to E.164.
    phone_fields: frozenset[str]
    #: Fields that must hold whole numbers, e.g. Whippy's ``birth_date.day``.
    integer_fields: frozenset[str]
    #: Longest text any field may hold, in characters (``None``: no limit).
    max_length: int | None = 255
    #: Fields every row must have: Whippy ``{"phone"}``, Reply ``{"email"}`` without contact ids.
    required: frozenset[str] = frozenset()
    #: The service's name, used in messages ("Reply fields are: ...").
    service: str = ""

    def accepts(self, target: str) -> bool:
        """Whether ``target`` names a field of the service."""
        if target in self.plain_fields():
            return True
        prefix, dot, name = target.partition(".")
        return bool(dot) and bool(name) and prefix in self.prefixes

    def plain_fields(self) -> frozenset[str]:
        """Every field named in full: known, email, phone and integer fields."""
        return self.known_fields | self.email_fields | self.phone_fields | self.integer_fields


@dataclass(frozen=True)
class PrepareSpec:
    """How one source's rows become contacts of one service."""

    #: Source column -> target field, e.g. ``{"work_email": "email", "tier": "customFields.Tier"}``.
    column_map: Mapping[str, str]
    #: The source column that names a row in results.
    key_column: str
    rules: FieldRules
    #: ISO 3166 alpha-2 region for numbers written without ``+<country code>``; ``None`` makes
    #: such numbers ``invalidPhone``.
    default_region: str | None = None
    #: Source column carrying the service's contact id (Reply); output column ``id`` (int64).
    id_column: str | None = None

    def __post_init__(self) -> None:
        region = self.default_region
        if region is not None and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"default_region {region!r} is not a region phonenumbers knows; "
                "give an ISO 3166 alpha-2 code such as 'US' or 'GB'"
            )


@dataclass
class Prepared:
    """One chunk after the prepare stage.

    ``contacts`` has one row per accepted source row: ``key`` (str), ``row`` (int64, position
    in the source), ``id`` (int64) when the spec has an id column, then one column per target
    field in column-map order, named as the field (dotted names kept). Text, email and phone
    columns hold ``str`` or ``None``; integer fields are ``Int64`` with ``<NA>`` when missing.
    ``rejected`` holds ``(key, reason, detail)`` in source order, and ``rejected_rows`` the
    source position of each.

    The key is the key column's text, trimmed; when the key column is mapped to an email or
    phone field it is the normalised email or the E.164 number, so the same contact written two
    ways has one key. A row without a key is rejected under ``row:<source position>``.
    """

    contacts: pd.DataFrame
    rejected: list[tuple[str, str, str]]
    #: The source position of each rejection, in the same order as ``rejected``.
    rejected_rows: list[int] = field(default_factory=list)


def validate_column_map(column_map: Mapping[str, str], rules: FieldRules) -> None:
    """Raise ``ValueError`` when the column map names a field the service does not have.

    Also refused: two source columns mapped to one field, and a required field no column maps
    to (every row would be rejected).
    """
    seen: dict[str, str] = {}
    for source, target in column_map.items():
        if not isinstance(target, str) or not rules.accepts(target):
            raise ValueError(
                f"column_map maps {source!r} to unknown field {target!r}; {_describe_fields(rules)}"
            )
        if target in seen:
            raise ValueError(
                f"column_map maps both {seen[target]!r} and {source!r} to field {target!r}; "
                "map each field from one column"
            )
        seen[target] = source
    missing = sorted(rules.required - set(seen))
    if missing:
        who = rules.service or "the service"
        raise ValueError(
            f"column_map maps no column to {', '.join(map(repr, missing))}, which {who} requires"
        )


def _describe_fields(rules: FieldRules) -> str:
    service = f"{rules.service} fields" if rules.service else "the accepted fields"
    text = f"{service} are: {', '.join(sorted(rules.plain_fields()))}"
    if rules.prefixes:
        text += "; nested fields: " + ", ".join(f"{prefix}.<name>" for prefix in sorted(rules.prefixes))
    return text


def check_columns(columns: Sequence[str], spec: PrepareSpec) -> None:
    """Raise ``ValueError`` when a column the spec reads is not in the source."""
    present = set(columns)
    wanted: dict[str, str] = {}
    for source in spec.column_map:
        wanted.setdefault(source, "mapped in column_map")
    wanted[spec.key_column] = "the key column"
    if spec.id_column is not None:
        wanted[spec.id_column] = "the id column"
    absent = [f"{name!r} ({why})" for name, why in wanted.items() if name not in present]
    if absent:
        noun = "column" if len(absent) == 1 else "columns"
        listing = ", ".join(str(column) for column in columns) or "(none)"
        raise ValueError(f"the source has no {noun} {', '.join(absent)}; its columns are: {listing}")
    counts = pd.Index(list(columns)).value_counts()
    doubled = sorted(str(name) for name in wanted if counts.get(name, 0) > 1)
    if doubled:
        raise ValueError(f"the source has more than one column named {', '.join(map(repr, doubled))}")


# --- the stage ---------------------------------------------------------------------------------


class _Rows:
    """Which rows of the chunk are still accepted, and why the others are not."""

    def __init__(self, size: int) -> None:
        self.ok: Mask = np.ones(size, dtype=bool)
        self.reasons: dict[int, tuple[str, str]] = {}

    def reject(self, failing: Mask, reason: str, detail: Callable[[int], str]) -> None:
        """Reject the failing rows not rejected yet: the first failing check wins."""
        new = failing & self.ok
        for position in np.flatnonzero(new).tolist():
            self.reasons[position] = (reason, detail(position))
        self.ok &= ~new


def prepare_chunk(frame: pd.DataFrame, spec: PrepareSpec, *, first_row: int) -> Prepared:
    """Map, normalise and check one chunk; the chunk's i-th row is source row ``first_row + i``.

    Checks run in a fixed order and a rejected row gets the first one it fails: key, contact
    id, required fields, emails, phones, integer fields, lengths.
    """
    validate_column_map(spec.column_map, spec.rules)
    check_columns(list(frame.columns), spec)
    rules = spec.rules
    size = len(frame)
    rows = _Rows(size)
    texts: dict[str, pa.Array] = {}

    def text_of(column: str) -> pa.Array:
        if column not in texts:
            texts[column] = _text(frame[column])
        return texts[column]

    field_source = {target: source for source, target in spec.column_map.items()}

    # 1. key
    key_text = text_of(spec.key_column)
    keys: npt.NDArray[np.object_] = key_text.to_numpy(zero_copy_only=False).astype(object, copy=False)
    rows.reject(
        ~_valid(key_text),
        outcomes.MISSING_KEY,
        lambda i: f"row {first_row + i} has no value in the key column {spec.key_column!r}",
    )

    # 2. contact id
    ids: npt.NDArray[np.int64] | None = None
    if spec.id_column is not None:
        id_column = spec.id_column
        id_text = text_of(id_column)
        ids, id_good = _integers(id_text, positive=True)
        present = _valid(id_text)
        rows.reject(~present, outcomes.INVALID_CONTACT_ID, lambda i: f"the id column {id_column!r} is empty")
        rows.reject(
            ~id_good,
            outcomes.INVALID_CONTACT_ID,
            lambda i: f"contact id {_shown(id_text, i)!r} in column {id_column!r} is not a positive integer",
        )

    # 3. required fields
    for target in sorted(rules.required):
        source = field_source[target]  # validate_column_map made sure every required field is mapped
        reason = (
            outcomes.MISSING_EMAIL
            if target in rules.email_fields
            else outcomes.MISSING_PHONE
            if target in rules.phone_fields
            else outcomes.MISSING_FIELD
        )
        rows.reject(
            ~_valid(text_of(source)),
            reason,
            functools.partial(_missing_detail, target, source),
        )

    # 4.-6. normalise emails, phones and integers
    values: dict[str, Any] = {}
    for target, source in field_source.items():
        if target in rules.email_fields:
            column = normalise_emails(text_of(source))
            rows.reject(column.bad, outcomes.INVALID_EMAIL, column.details.__getitem__)
            values[target] = column.values
    for target, source in field_source.items():
        if target in rules.phone_fields and target not in values:
            column = normalise_phones(text_of(source), spec.default_region)
            rows.reject(column.bad, outcomes.INVALID_PHONE, column.details.__getitem__)
            values[target] = column.values
    for target, source in field_source.items():
        if target in rules.integer_fields and target not in values:
            field_text = text_of(source)
            numbers, good = _integers(field_text, positive=False)
            rows.reject(
                _valid(field_text) & ~good,
                outcomes.INVALID_FIELD,
                functools.partial(_integer_detail, target, field_text),
            )
            values[target] = pd.array(numbers, dtype="Int64")
            values[target][~good] = pd.NA

    # 7. lengths
    if rules.max_length is not None:
        limit = rules.max_length
        for target, source in field_source.items():
            if target in rules.integer_fields:
                continue
            if target in values:
                lengths = _lengths(pa.array(values[target], type=_TEXT, from_pandas=True))
            else:
                lengths = _lengths(text_of(source))
            rows.reject(
                lengths > limit,
                outcomes.FIELD_TOO_LONG,
                functools.partial(_length_detail, target, lengths, limit, rules.service),
            )

    # the key is the normalised email or phone when the key column holds one
    key_target = spec.column_map.get(spec.key_column)
    if key_target is not None and key_target in values and key_target not in rules.integer_fields:
        normalised = values[key_target]
        if key_target in rules.email_fields:
            keys = np.array([None if key is None else key.lower() for key in keys.tolist()], dtype=object)
        keys = np.where(pd.isna(normalised), keys, normalised).astype(object)

    ok = rows.ok
    data: dict[str, Any] = {
        "key": pd.Series(keys[ok], dtype=object),
        "row": pd.Series(np.arange(first_row, first_row + size, dtype=np.int64)[ok], dtype=np.int64),
    }
    if ids is not None:
        data["id"] = pd.Series(ids[ok], dtype=np.int64)
    for source, target in spec.column_map.items():
        if target in values:
            column_values = values[target]
            if isinstance(column_values, np.ndarray):
                data[target] = pd.Series(column_values[ok], dtype=object)
            else:
                data[target] = pd.Series(column_values[ok], dtype="Int64")
        else:
            data[target] = pd.Series(_objects(text_of(source))[ok], dtype=object)
    contacts = pd.DataFrame(data)
    contacts.index = pd.RangeIndex(len(contacts))

    rejected = []
    rejected_rows = []
    for position in sorted(rows.reasons):
        reason, detail = rows.reasons[position]
        key = keys[position]
        if reason == outcomes.MISSING_KEY or key is None:
            key = f"row:{first_row + position}"
        rejected.append((str(key), reason, detail))
        rejected_rows.append(first_row + position)
    return Prepared(contacts=contacts, rejected=rejected, rejected_rows=rejected_rows)


def _missing_detail(target: str, source: str, position: int) -> str:
    return f"{target} is empty (column {source!r})"


def _integer_detail(target: str, text: pa.Array, position: int) -> str:
    return f"{target} must be a whole number; got {_shown(text, position)!r}"


def _length_detail(target: str, lengths: npt.NDArray[np.int64], limit: int, service: str, i: int) -> str:
    who = service or "the service"
    return f"{target} is {int(lengths[i])} characters; {who} accepts at most {limit}"


# --- text ---------------------------------------------------------------------------------------


def _valid(array: pa.Array) -> Mask:
    """True where the array has a value."""
    return _mask(pc.is_valid(array))


def _mask(array: pa.Array) -> Mask:
    """A boolean Arrow array as numpy, nulls as False."""
    result: Mask = array.fill_null(False).to_numpy(zero_copy_only=False)
    return result


def _lengths(array: pa.Array) -> npt.NDArray[np.int64]:
    """Characters per value (code points, as ``len``); 0 for nulls."""
    result: npt.NDArray[np.int64] = (
        pc.utf8_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    )
    return result


def _objects(array: pa.Array) -> npt.NDArray[np.object_]:
    """An Arrow string array as a numpy object array of ``str`` and ``None``."""
    result: npt.NDArray[np.object_] = array.to_numpy(zero_copy_only=False).astype(object, copy=False)
    return result


def _shown(array: pa.Array, position: int) -> str:
    value = array[position].as_py()
    return "" if value is None else str(value)


def _text(series: pd.Series) -> pa.Array:
    """The column as trimmed text: numbers without a spurious ``.0``, missing and blank as null."""
    raw = _raw_text(series)
    trimmed = pc.utf8_trim(raw, characters=WHITESPACE)
    return pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), _NULL_TEXT, trimmed)


def _flat(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], type=array.type)
    return array


def _raw_text(series: pd.Series) -> pa.Array:
    dtype = series.dtype
    if isinstance(dtype, pd.StringDtype):
        return _flat(pa.array(series.array)).cast(_TEXT)
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iu":
            return pa.array(series.to_numpy()).cast(_TEXT)
        if dtype.kind == "f":
            return _float_text(series.to_numpy(dtype=np.float64))
        if dtype.kind == "b":
            return pa.array(np.where(series.to_numpy(), "True", "False"), type=_TEXT)
        if dtype.kind == "O":
            return _object_text(series.to_numpy())
    if pd.api.types.is_integer_dtype(dtype):
        return _flat(pa.array(series.array)).cast(_TEXT)
    if pd.api.types.is_float_dtype(dtype):
        return _float_text(series.to_numpy(dtype=np.float64, na_value=np.nan))
    return _object_text(series.to_numpy(dtype=object))


def _float_text(values: npt.NDArray[np.float64]) -> pa.Array:
    """Floats as text: integral ones as integers (4155550123.0 -> "4155550123"), NaN as null."""
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(values) & (np.trunc(values) == values) & (np.abs(values) < 2**63)
    whole = np.where(integral, values, 0).astype(np.int64)
    text = pa.array(whole, mask=~integral).cast(_TEXT)
    other = ~integral & ~np.isnan(values)
    if other.any():
        text = pc.replace_with_mask(
            text, pa.array(other), pa.array([_float_str(v) for v in values[other].tolist()], type=_TEXT)
        )
    return text


def _float_str(value: float) -> str:
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def _object_text(values: npt.NDArray[Any]) -> pa.Array:
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "empty":
        return pa.nulls(len(values), type=_TEXT)
    if kind == "string":
        try:
            return pa.array(values, type=_TEXT, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, UnicodeError):
            pass  # NaT among strings, or a lone surrogate: go value by value
    texts = [_value_text(value) for value in values.tolist()]
    try:
        return pa.array(texts, type=_TEXT)
    except (pa.ArrowException, UnicodeError):
        return pa.array([_encodable(text) for text in texts], type=_TEXT)


def _encodable(text: str | None) -> str | None:
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _value_text(value: Any) -> str | None:
    """One source value as text; ``None`` for every kind of missing."""
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        try:
            return str(int(value))
        except ValueError:  # more digits than str() will write
            return hex(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return None if math.isnan(number) else _float_str(number)
    if isinstance(value, Decimal):
        if value.is_nan():
            return None
        if value.is_finite() and value.adjusted() < 40 and value == value.to_integral_value():
            return str(int(value))
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        missing = pd.isna(value)
    except (TypeError, ValueError):
        missing = False
    if isinstance(missing, (bool, np.bool_)) and missing:
        return None
    return str(value)


# --- integers -----------------------------------------------------------------------------------


def _integers(text: pa.Array, *, positive: bool) -> tuple[npt.NDArray[np.int64], Mask]:
    """Whole numbers in int64 from text ("12", "12.0", "1.5e9"); the mask marks good values."""
    size = len(text)
    numbers = np.zeros(size, dtype=np.int64)
    good = _mask(pc.match_substring_regex(text, r"^-?[0-9]{1,18}$"))
    if good.any():
        numbers[good] = pc.cast(text.filter(pa.array(good)), pa.int64()).to_numpy()
    rest = np.flatnonzero(_valid(text) & ~good)
    if rest.size:
        parsed = {value: _to_integer(value) for value in dict.fromkeys(text.take(pa.array(rest)).to_pylist())}
        for position, value in zip(rest.tolist(), text.take(pa.array(rest)).to_pylist(), strict=True):
            number = parsed[value]
            if number is not None:
                numbers[position] = number
                good[position] = True
    if positive:
        good &= numbers > 0
    return numbers, good


def _to_integer(text: str) -> int | None:
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number.adjusted() > 18 or number != number.to_integral_value():
        return None
    value = int(number)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


# --- emails -------------------------------------------------------------------------------------

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


@dataclass
class CheckedColumn:
    """A normalised column: values (``None`` where missing or bad) and why bad rows are bad."""

    values: npt.NDArray[np.object_]
    bad: Mask
    details: dict[int, str]


def normalise_emails(text: pa.Array) -> CheckedColumn:
    """Lowercase and check every email; email-validator sees only the unusual ones."""
    size = len(text)
    values: npt.NDArray[np.object_] = np.full(size, None, dtype=object)
    bad = np.zeros(size, dtype=bool)
    details: dict[int, str] = {}
    present = _valid(text)
    lowered = pc.ascii_lower(text)
    fast = (
        present
        & _mask(pc.string_is_ascii(text))
        & _mask(pc.match_substring_regex(lowered, EMAIL_FAST_PATTERN))
        & ~_mask(pc.match_substring_regex(lowered, EMAIL_SLOW_PATTERN))
        & (_lengths(text) <= _EMAIL_MAX_LENGTH)
    )
    if fast.any():
        values[fast] = _objects(lowered.filter(pa.array(fast)))
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


# --- phones -------------------------------------------------------------------------------------

#: Digits with the usual separators and at most one leading plus: what the fast path reads.
_PHONE_SHAPE = r"^\+?[0-9 ().\-/]{1,64}$"
_PHONE_SEPARATORS = r"[ ().\-/]"
_PHONE_DESCS = (
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


def normalise_phones(text: pa.Array, region: str | None) -> CheckedColumn:
    """Every phone as E.164; phonenumbers sees only numbers the metadata check cannot settle."""
    size = len(text)
    region = region.upper() if region else None
    values, fast = _phones_fast(text, region)
    bad = np.zeros(size, dtype=bool)
    details: dict[int, str] = {}
    slow = np.flatnonzero(_valid(text) & ~fast)
    if slow.size:
        originals = text.take(pa.array(slow)).to_pylist()
        checked = {value: check_phone(value, region) for value in dict.fromkeys(originals)}
        for position, value in zip(slow.tolist(), originals, strict=True):
            e164, problem = checked[value]
            if problem is None:
                values[position] = e164
            else:
                bad[position] = True
                details[position] = problem
    return CheckedColumn(values, bad, details)


@functools.lru_cache(maxsize=1 << 16)
def check_phone(value: str, region: str | None) -> tuple[str | None, str | None]:
    """One phone through phonenumbers: ``(e164, None)`` or ``(None, problem)``."""
    if any(character.isalpha() for character in value):
        return None, f"{value!r} is not a phone number: it contains letters"
    try:
        number = phonenumbers.parse(value, region)
    except NumberParseException as error:
        return None, _parse_problem(value, region, error)
    if number.extension:
        return None, f"{value!r} has an extension; give the number without it"
    international = "+" in value or "\uff0b" in value
    if not phonenumbers.is_valid_number(number):
        if region is not None and not international:
            return None, (
                f"{value!r} is not a valid {region} phone number; "
                "numbers from other countries need +<country code>"
            )
        return None, f"{value!r} is not a valid phone number"
    e164: str = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    digits = len(e164) - 1
    if not E164_MIN_DIGITS <= digits <= E164_MAX_DIGITS:
        return None, (
            f"{value!r} is not a valid phone number: it has {digits} digits and E.164 allows "
            f"{E164_MIN_DIGITS} to {E164_MAX_DIGITS}"
        )
    return e164, None


def _parse_problem(value: str, region: str | None, error: NumberParseException) -> str:
    kind = error.error_type
    if kind == NumberParseException.INVALID_COUNTRY_CODE:
        if region is None and "+" not in value and "\uff0b" not in value:
            return f"{value!r} has no country code; set default_region or use +<country code>"
        return f"{value!r} has no known country code"
    if kind in (NumberParseException.TOO_SHORT_NSN, NumberParseException.TOO_SHORT_AFTER_IDD):
        return f"{value!r} is too short to be a phone number"
    if kind == NumberParseException.TOO_LONG:
        return f"{value!r} is too long to be a phone number"
    return f"{value!r} is not a phone number"


def _phones_fast(text: pa.Array, region: str | None) -> tuple[npt.NDArray[np.object_], Mask]:
    """E.164 for the numbers the metadata check accepts without phonenumbers.parse.

    Accepted: ``+<country code><national number>`` and, with a default region, a national
    number, written with digits and ``( ) - . / space``, where parse would strip no national or
    international prefix, keep no leading zero, and the number is valid for its country code
    as ``phonenumbers.is_valid_number`` decides. Everything else is left for ``check_phone``.
    """
    size = len(text)
    values: npt.NDArray[np.object_] = np.full(size, None, dtype=object)
    fast = np.zeros(size, dtype=bool)
    shaped = np.flatnonzero(_mask(pc.match_substring_regex(text, _PHONE_SHAPE)))
    if not shaped.size:
        return values, fast
    digits = pc.replace_substring_regex(text.take(pa.array(shaped)), _PHONE_SEPARATORS, "")
    plus = _mask(pc.starts_with(digits, "+"))
    number = pc.if_else(pa.array(plus), pc.utf8_slice_codeunits(digits, 1), digits)
    leading_zero = _mask(pc.starts_with(number, "0"))

    groups: list[tuple[npt.NDArray[np.intp], int, pa.Array]] = []  # (positions in shaped, cc, nsn)
    international = plus & ~leading_zero
    code_length = np.zeros(len(shaped), dtype=np.int64)
    for length in (3, 2, 1):  # the shortest known code wins, as in phonenumbers
        prefix = pc.utf8_slice_codeunits(number, 0, length)
        known = _mask(pc.is_in(prefix, value_set=_country_codes(length)))
        code_length[known & (_lengths(number) > length)] = length
    for length in (1, 2, 3):
        positions = np.flatnonzero(international & (code_length == length))
        if not positions.size:
            continue
        picked = number.take(pa.array(positions))
        codes = pc.utf8_slice_codeunits(picked, 0, length)
        national = pc.utf8_slice_codeunits(picked, length)
        for code in pc.unique(codes).to_pylist():
            same = _mask(pc.equal(codes, code))
            groups.append((positions[same], int(code), national.filter(pa.array(same))))
    if region is not None:
        metadata: Any = PhoneMetadata.metadata_for_region(region, None)  # a supported region (PrepareSpec)
        code = int(metadata.country_code)
        national_form = (
            ~plus
            & ~_mask(pc.starts_with(number, str(code)))
            & ~_starts_with_pattern(number, metadata.international_prefix)
        )
        with_prefix = _starts_with_pattern(number, metadata.national_prefix_for_parsing)
        positions = np.flatnonzero(national_form & ~with_prefix & ~leading_zero)
        if positions.size:
            groups.append((positions, code, number.take(pa.array(positions))))
        positions = np.flatnonzero(national_form & with_prefix)
        if positions.size:
            kept, stripped = _strip_national_prefix(number.take(pa.array(positions)), metadata)
            if kept.any():
                groups.append((positions[kept], code, stripped))

    for positions, code, national in groups:
        # parse strips a national prefix with the main region's metadata: leave such numbers
        main = _metadata(code, _main_region(code))
        accepted = ~_starts_with_pattern(national, main.national_prefix_for_parsing)
        accepted &= _valid_national_numbers(code, national)
        accepted &= ~_mask(pc.starts_with(national, "0"))
        total = _lengths(national) + len(str(code))
        accepted &= (total >= E164_MIN_DIGITS) & (total <= E164_MAX_DIGITS)
        if not accepted.any():
            continue
        e164 = pc.binary_join_element_wise(
            pa.scalar(f"+{code}", type=_TEXT), national.filter(pa.array(accepted)), pa.scalar("", type=_TEXT)
        )
        rows = shaped[positions[accepted]]
        values[rows] = _objects(e164)
        fast[rows] = True
    return values, fast


def _strip_national_prefix(numbers: pa.Array, metadata: Any) -> tuple[Mask, pa.Array]:
    """National numbers of the default region with their national prefix (the 0 of 020...) off.

    Only where parse would certainly strip it the same way: the region has no transform rule,
    the number without the prefix still matches the general pattern whenever the number with
    it did, and its length is a possible one (not a local-only one). The mask marks those
    numbers; the array holds them stripped.
    """
    size = len(numbers)
    prefix_pattern = _non_capturing(metadata.national_prefix_for_parsing)
    general = metadata.general_desc
    if (
        prefix_pattern is None
        or metadata.national_prefix_transform_rule
        or general is None
        or not general.national_number_pattern
    ):
        return np.zeros(size, dtype=bool), pa.array([], type=_TEXT)
    prefix = pc.struct_field(pc.extract_regex(numbers, f"^(?P<prefix>{prefix_pattern})"), [0])
    prefix_lengths = _lengths(prefix)
    starts = np.unique(prefix_lengths)
    stripped = numbers
    for start in starts.tolist():
        same = pa.array(prefix_lengths == start)
        stripped = pc.if_else(same, pc.utf8_slice_codeunits(numbers, start), stripped)
    pattern = f"^(?:{general.national_number_pattern})$"
    was_viable = _mask(pc.match_substring_regex(numbers, pattern))
    still_viable = _mask(pc.match_substring_regex(stripped, pattern))
    lengths = _lengths(stripped)
    kept = (
        _valid(prefix)
        & (prefix_lengths > 0)
        & ~(was_viable & ~still_viable)
        & np.isin(lengths, np.asarray(general.possible_length, dtype=np.int64))
        & ~np.isin(lengths, np.asarray(general.possible_length_local_only or (-1,), dtype=np.int64))
    )
    return kept, stripped.filter(pa.array(kept))


@functools.cache
def _non_capturing(pattern: str | None) -> str | None:
    """The pattern with its groups made non-capturing (Arrow extracts only named groups)."""
    if not pattern or "\\(" in pattern or re.search(r"\[[^\]]*\(", pattern):
        return None
    converted = re.sub(r"\((?!\?)", "(?:", pattern)
    return converted if re.compile(converted).groups == 0 else None


def _starts_with_pattern(text: pa.Array, pattern: str | None) -> Mask:
    """Where a metadata pattern matches at the start (``re.match``); all False for no pattern."""
    if not pattern:
        return np.zeros(len(text), dtype=bool)
    return _mask(pc.match_substring_regex(text, f"^(?:{pattern})"))


@functools.cache
def _country_codes(length: int) -> pa.Array:
    codes = [str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE if len(str(code)) == length]
    return pa.array(codes, type=_TEXT)


def _main_region(code: int) -> str:
    region: str = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code][0]
    return region


def _metadata(code: int, region: str) -> Any:
    return PhoneMetadata.metadata_for_region_or_calling_code(code, region.upper())


def _valid_national_numbers(code: int, national: pa.Array) -> Mask:
    """``phonenumbers.is_valid_number`` for every national number of one country code at once.

    The same steps: pick the region (the only one, or the first whose leading digits match or
    whose patterns know the number), then the number must match the general pattern and one
    number type's pattern of that region, lengths included.
    """
    regions: tuple[str, ...] = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code, ())
    size = len(national)
    if len(regions) == 1:
        return _known_type(national, _metadata(code, regions[0]))
    valid = np.zeros(size, dtype=bool)
    undecided = np.ones(size, dtype=bool)
    for region in regions:
        if not undecided.any():
            break
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        positions = np.flatnonzero(undecided)
        subset = national.take(pa.array(positions))
        if metadata.leading_digits is not None:
            chosen = _starts_with_pattern(subset, metadata.leading_digits)
            valid[positions[chosen]] = _known_type(subset.filter(pa.array(chosen)), metadata)
        else:
            chosen = _known_type(subset, metadata)
            valid[positions[chosen]] = True
        undecided[positions[chosen]] = False
    return valid


def _known_type(national: pa.Array, metadata: Any) -> Mask:
    """Whether ``_number_type_helper`` gives anything but UNKNOWN, for each number."""
    known = _matches_desc(national, metadata.general_desc)
    if not known.any():
        return known
    typed = np.zeros(len(national), dtype=bool)
    for name in _PHONE_DESCS:
        if name == "mobile" and metadata.same_mobile_and_fixed_line_pattern:
            continue
        open_ = np.flatnonzero(known & ~typed)
        if not open_.size:
            break
        typed[open_[_matches_desc(national.take(pa.array(open_)), getattr(metadata, name))]] = True
    return known & typed


def _matches_desc(national: pa.Array, desc: Any) -> Mask:
    """``_is_number_matching_desc``: a possible length and a full match of the pattern."""
    size = len(national)
    if desc is None or not desc.national_number_pattern:
        return np.zeros(size, dtype=bool)
    matches = np.ones(size, dtype=bool)
    if desc.possible_length:
        matches &= np.isin(_lengths(national), np.asarray(desc.possible_length, dtype=np.int64))
    if matches.any():
        positions = np.flatnonzero(matches)
        pattern = f"^(?:{desc.national_number_pattern})$"
        matches[positions] = _mask(pc.match_substring_regex(national.take(pa.array(positions)), pattern))
    return matches
