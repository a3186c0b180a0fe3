"""The prepare stage: one chunk of source rows becomes contacts ready to send, or rejections.

Source columns become contact fields through a column map; keys, emails
(:mod:`~airflow_provider_sequences.sync.emails`), phones
(:mod:`~airflow_provider_sequences.sync.phones`), integers and lengths are checked column by
column. A row that fails a check becomes a rejection with a reason slug (see
:mod:`airflow_provider_sequences.sync.outcomes`) and a detail a person can act on; it never
raises and never affects another row. No deduplication happens here: the caller does it.
"""

from __future__ import annotations

import functools
import math
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

from airflow_provider_sequences.sync import outcomes
from airflow_provider_sequences.sync.contract import FieldRules
from airflow_provider_sequences.sync.emails import EMAIL_FAST_PATTERN as EMAIL_FAST_PATTERN
from airflow_provider_sequences.sync.emails import EMAIL_SLOW_PATTERN as EMAIL_SLOW_PATTERN
from airflow_provider_sequences.sync.emails import check_email as check_email
from airflow_provider_sequences.sync.emails import normalise_emails as normalise_emails
from airflow_provider_sequences.sync.masking import mask_quoted
from airflow_provider_sequences.sync.phones import check_phone as check_phone
from airflow_provider_sequences.sync.phones import normalise_phones as normalise_phones
from airflow_provider_sequences.sync.source import UNDECODABLE_BYTES
from airflow_provider_sequences.sync.text import (
    TEXT,
    Mask,
    bool_mask,
    column_text,
    text_lengths,
    to_objects,
    valid_mask,
)
from airflow_provider_sequences.sync.text import WHITESPACE as WHITESPACE
from airflow_provider_sequences.sync.text import CheckedColumn as CheckedColumn

__all__ = [
    "PrepareSpec",
    "Prepared",
    "check_columns",
    "prepare_chunk",
    "validate_column_map",
]

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


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
    #: Details name the column and the problem, with the value masked (see
    #: :mod:`~airflow_provider_sequences.sync.masking`), instead of quoting the value.
    mask_values: bool = False

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
    used = dict.fromkeys([spec.key_column, *spec.column_map, *([spec.id_column] if spec.id_column else [])])
    for name in used:
        _check_scalars(frame[name], name, spec.rules.service)
    rules = spec.rules
    size = len(frame)
    rows = _Rows(size)
    texts: dict[str, pa.Array] = {}

    def text_of(column: str) -> pa.Array:
        if column not in texts:
            texts[column] = column_text(frame[column])
        return texts[column]

    field_source = {target: source for source, target in spec.column_map.items()}

    def shown(detail: Callable[[int], str], column: str) -> Callable[[int], str]:
        """A check's detail, with the value it quotes masked when the spec says so."""
        if not spec.mask_values:
            return detail
        return lambda i: mask_quoted(detail(i), _shown(text_of(column), i), column)

    # 1. key
    key_text = text_of(spec.key_column)
    keys: npt.NDArray[np.object_] = key_text.to_numpy(zero_copy_only=False).astype(object, copy=False)
    rows.reject(
        ~valid_mask(key_text),
        outcomes.MISSING_KEY,
        lambda i: f"row {first_row + i} has no value in the key column {spec.key_column!r}",
    )
    rows.reject(
        _inexact(frame[spec.key_column]),
        outcomes.INVALID_FIELD,
        functools.partial(_inexact_detail, spec.key_column, first_row),
    )
    rows.reject(
        _undecodable(key_text),
        outcomes.MISSING_KEY,
        lambda i: (
            f"row {first_row + i} holds bytes that are not UTF-8 text in the key column {spec.key_column!r}"
        ),
    )
    for source in spec.column_map:
        rows.reject(
            _undecodable(text_of(source)),
            outcomes.INVALID_FIELD,
            functools.partial(_bytes_detail, source),
        )

    # 2. contact id
    ids: npt.NDArray[np.int64] | None = None
    if spec.id_column is not None:
        id_column = spec.id_column
        id_text = text_of(id_column)
        ids, id_good = _integers(id_text, positive=True)
        present = valid_mask(id_text)
        rows.reject(~present, outcomes.INVALID_CONTACT_ID, lambda i: f"the id column {id_column!r} is empty")
        rows.reject(
            ~id_good,
            outcomes.INVALID_CONTACT_ID,
            shown(
                lambda i: (
                    f"contact id {_shown(id_text, i)!r} in column {id_column!r} is not a positive integer"
                ),
                id_column,
            ),
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
            ~valid_mask(text_of(source)),
            reason,
            functools.partial(_missing_detail, target, source),
        )

    # 4.-6. normalise emails, phones and integers
    values: dict[str, Any] = {}
    for target, source in field_source.items():
        if target in rules.email_fields:
            column = normalise_emails(text_of(source))
            rows.reject(column.bad, outcomes.INVALID_EMAIL, shown(column.details.__getitem__, source))
            values[target] = column.values
    for target, source in field_source.items():
        if target in rules.phone_fields and target not in values:
            column = normalise_phones(text_of(source), spec.default_region)
            rows.reject(column.bad, outcomes.INVALID_PHONE, shown(column.details.__getitem__, source))
            values[target] = column.values
    for target, source in field_source.items():
        if target in rules.integer_fields and target not in values:
            field_text = text_of(source)
            numbers, good = _integers(field_text, positive=False)
            rows.reject(
                valid_mask(field_text) & ~good,
                outcomes.INVALID_FIELD,
                shown(functools.partial(_integer_detail, target, field_text), source),
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
                lengths = text_lengths(pa.array(values[target], type=TEXT, from_pandas=True))
            else:
                lengths = text_lengths(text_of(source))
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
            data[target] = pd.Series(to_objects(text_of(source))[ok], dtype=object)
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


def _undecodable(text: pa.Array) -> Mask:
    return bool_mask(pc.starts_with(text, UNDECODABLE_BYTES))


def _bytes_detail(source: str, position: int) -> str:
    return f"column {source!r} holds bytes that are not UTF-8 text; decode them in the source"


#: Value kinds (``pandas.api.types.infer_dtype``) that cannot hold a nested value.
_SCALAR_KINDS = frozenset(
    {"empty", "string", "integer", "floating", "mixed-integer-float", "boolean", "decimal", "bytes"}
    | {"datetime", "datetime64", "date", "time", "timedelta", "timedelta64", "period", "integer-na"}
)


def _check_scalars(column: pd.Series, name: str, service: str) -> None:
    """Refuse a column of nested values (a Parquet struct or list, a JSON object): sent, they
    would arrive as Python's text for them. No field of either service takes an object."""
    if (
        not pd.api.types.is_object_dtype(column.dtype)
        or pd.api.types.infer_dtype(column, skipna=True) in _SCALAR_KINDS
    ):
        return
    for position, value in enumerate(column.tolist()):
        if isinstance(value, (dict, list, tuple, set, np.ndarray)):
            kind = "an object (struct or map)" if isinstance(value, dict) else "a list"
            raise ValueError(
                f"column {name!r} holds nested values (row {position} holds {kind}), which no "
                f"{service} field takes: flatten it in the source (one column per part, mapped to "
                "fields such as address.city) or map another column"
            )


def _inexact(column: pd.Series) -> Mask:
    """Where a key is a floating point number too large to be exact: beyond 2**53 (float64)
    neighbouring whole numbers share one value, so two people could merge into one."""
    dtype = column.dtype
    if pd.api.types.is_float_dtype(dtype):
        numpy_dtype = getattr(dtype, "numpy_dtype", dtype)
        limit = 2.0 ** (np.finfo(numpy_dtype).nmant + 1)
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            found: Mask = np.isfinite(values) & (np.abs(values) >= limit)
        return found
    kinds = ("string", "empty", "integer", "boolean", "bytes")
    if pd.api.types.is_object_dtype(dtype) and pd.api.types.infer_dtype(column, skipna=True) not in kinds:
        return np.fromiter(
            (
                isinstance(value, (float, np.floating))
                and math.isfinite(value)
                and abs(float(value)) >= 2.0**53
                for value in column.tolist()
            ),
            dtype=bool,
            count=len(column),
        )
    return np.zeros(len(column), dtype=bool)


def _inexact_detail(key_column: str, first_row: int, position: int) -> str:
    return (
        f"row {first_row + position} has a key in column {key_column!r} stored as a floating point "
        "number too large to be exact (beyond 2**53), so two keys could merge into one: cast the key "
        "column to text (or a 64-bit integer) in the source"
    )


def _missing_detail(target: str, source: str, position: int) -> str:
    return f"{target} is empty (column {source!r})"


def _integer_detail(target: str, text: pa.Array, position: int) -> str:
    return f"{target} must be a whole number; got {_shown(text, position)!r}"


def _length_detail(target: str, lengths: npt.NDArray[np.int64], limit: int, service: str, i: int) -> str:
    who = service or "the service"
    return f"{target} is {int(lengths[i])} characters; {who} accepts at most {limit}"


def _shown(array: pa.Array, position: int) -> str:
    value = array[position].as_py()
    return "" if value is None else str(value)


# --- integers -----------------------------------------------------------------------------------


def _integers(text: pa.Array, *, positive: bool) -> tuple[npt.NDArray[np.int64], Mask]:
    """Whole numbers in int64 from text ("12", "12.0", "1.5e9"); the mask marks good values."""
    size = len(text)
    numbers = np.zeros(size, dtype=np.int64)
    good = bool_mask(pc.match_substring_regex(text, r"^-?[0-9]{1,18}$"))
    if good.any():
        numbers[good] = pc.cast(text.filter(pa.array(good)), pa.int64()).to_numpy()
    rest = np.flatnonzero(valid_mask(text) & ~good)
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
