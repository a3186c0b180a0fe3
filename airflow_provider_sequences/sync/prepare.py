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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import phonenumbers
import pyarrow as pa

from airflow_provider_sequences.sync import columns, outcomes
from airflow_provider_sequences.sync.contract import FieldRules
from airflow_provider_sequences.sync.emails import EMAIL_FAST_PATTERN as EMAIL_FAST_PATTERN
from airflow_provider_sequences.sync.emails import EMAIL_SLOW_PATTERN as EMAIL_SLOW_PATTERN
from airflow_provider_sequences.sync.emails import check_email as check_email
from airflow_provider_sequences.sync.emails import normalise_emails as normalise_emails
from airflow_provider_sequences.sync.masking import mask_quoted
from airflow_provider_sequences.sync.phones import check_phone as check_phone
from airflow_provider_sequences.sync.phones import normalise_phones as normalise_phones
from airflow_provider_sequences.sync.text import (
    TEXT,
    Mask,
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
        columns.check_scalars(frame[name], name, spec.rules.service)
    chunk = _Chunk(frame, spec, first_row)
    keys = chunk.check_keys()
    chunk.check_contact_ids()
    chunk.check_required()
    chunk.normalise()
    chunk.check_lengths()
    keys = chunk.normalised_keys(keys)
    contacts = chunk.contacts(keys)
    rejected, rejected_rows = chunk.rejections(keys)
    return Prepared(contacts=contacts, rejected=rejected, rejected_rows=rejected_rows)


class _Chunk:
    """One chunk under the checks: its columns' text (read once each), its rows, its values."""

    def __init__(self, frame: pd.DataFrame, spec: PrepareSpec, first_row: int) -> None:
        self.frame = frame
        self.spec = spec
        self.rules = spec.rules
        self.first_row = first_row
        self.rows = _Rows(len(frame))
        self.texts: dict[str, pa.Array] = {}
        self.field_source = {target: source for source, target in spec.column_map.items()}
        #: Normalised values by target field (emails, phones, integers).
        self.values: dict[str, Any] = {}
        self.ids: npt.NDArray[np.int64] | None = None

    def text_of(self, column: str) -> pa.Array:
        if column not in self.texts:
            self.texts[column] = column_text(self.frame[column])
        return self.texts[column]

    def shown(self, detail: Callable[[int], str], column: str) -> Callable[[int], str]:
        """A check's detail, with the value it quotes masked when the spec says so."""
        if not self.spec.mask_values:
            return detail
        return lambda i: mask_quoted(detail(i), columns.shown_value(self.text_of(column), i), column)

    def check_keys(self) -> npt.NDArray[np.object_]:
        """1. The key: present, exact, decodable; every mapped column decodable. Returns the keys."""
        rows, first_row, key_column = self.rows, self.first_row, self.spec.key_column
        key_text = self.text_of(key_column)
        keys: npt.NDArray[np.object_] = key_text.to_numpy(zero_copy_only=False).astype(object, copy=False)
        rows.reject(
            ~valid_mask(key_text),
            outcomes.MISSING_KEY,
            lambda i: f"row {first_row + i} has no value in the key column {key_column!r}",
        )
        rows.reject(
            columns.inexact(self.frame[key_column]),
            outcomes.INVALID_FIELD,
            functools.partial(columns.inexact_detail, key_column, first_row),
        )
        rows.reject(
            columns.undecodable(key_text),
            outcomes.MISSING_KEY,
            lambda i: (
                f"row {first_row + i} holds bytes that are not UTF-8 text in the key column {key_column!r}"
            ),
        )
        for source in self.spec.column_map:
            rows.reject(
                columns.undecodable(self.text_of(source)),
                outcomes.INVALID_FIELD,
                functools.partial(columns.bytes_detail, source),
            )
        return keys

    def check_contact_ids(self) -> None:
        """2. The contact id, when the spec has an id column: a positive integer."""
        id_column = self.spec.id_column
        if id_column is None:
            return
        id_text = self.text_of(id_column)
        self.ids, id_good = columns.integers(id_text, positive=True)
        present = valid_mask(id_text)
        self.rows.reject(
            ~present, outcomes.INVALID_CONTACT_ID, lambda i: f"the id column {id_column!r} is empty"
        )
        self.rows.reject(
            ~id_good,
            outcomes.INVALID_CONTACT_ID,
            self.shown(
                lambda i: (
                    f"contact id {columns.shown_value(id_text, i)!r} in column {id_column!r} is not a "
                    "positive integer"
                ),
                id_column,
            ),
        )

    def check_required(self) -> None:
        """3. Required fields: present."""
        rules = self.rules
        for target in sorted(rules.required):
            source = self.field_source[target]  # validate_column_map made sure it is mapped
            reason = (
                outcomes.MISSING_EMAIL
                if target in rules.email_fields
                else outcomes.MISSING_PHONE
                if target in rules.phone_fields
                else outcomes.MISSING_FIELD
            )
            self.rows.reject(
                ~valid_mask(self.text_of(source)),
                reason,
                functools.partial(columns.missing_detail, target, source),
            )

    def normalise(self) -> None:
        """4.-6. Emails, phones and integers, normalised (and checked)."""
        rules, values, rows = self.rules, self.values, self.rows
        for target, source in self.field_source.items():
            if target in rules.email_fields:
                column = normalise_emails(self.text_of(source))
                rows.reject(
                    column.bad, outcomes.INVALID_EMAIL, self.shown(column.details.__getitem__, source)
                )
                values[target] = column.values
        for target, source in self.field_source.items():
            if target in rules.phone_fields and target not in values:
                column = normalise_phones(self.text_of(source), self.spec.default_region)
                rows.reject(
                    column.bad, outcomes.INVALID_PHONE, self.shown(column.details.__getitem__, source)
                )
                values[target] = column.values
        for target, source in self.field_source.items():
            if target in rules.integer_fields and target not in values:
                self._integer_field(target, source)

    def _integer_field(self, target: str, source: str) -> None:
        field_text = self.text_of(source)
        numbers, good = columns.integers(field_text, positive=False)
        self.rows.reject(
            valid_mask(field_text) & ~good,
            outcomes.INVALID_FIELD,
            self.shown(functools.partial(columns.integer_detail, target, field_text), source),
        )
        self.values[target] = pd.array(numbers, dtype="Int64")
        self.values[target][~good] = pd.NA

    def check_lengths(self) -> None:
        """7. Lengths: at most the service's limit, for every field but integers."""
        rules = self.rules
        if rules.max_length is None:
            return
        limit = rules.max_length
        for target, source in self.field_source.items():
            if target in rules.integer_fields:
                continue
            if target in self.values:
                lengths = text_lengths(pa.array(self.values[target], type=TEXT, from_pandas=True))
            else:
                lengths = text_lengths(self.text_of(source))
            self.rows.reject(
                lengths > limit,
                outcomes.FIELD_TOO_LONG,
                functools.partial(columns.length_detail, target, lengths, limit, rules.service),
            )

    def normalised_keys(self, keys: npt.NDArray[np.object_]) -> npt.NDArray[np.object_]:
        """The key is the normalised email or phone when the key column holds one."""
        key_target = self.spec.column_map.get(self.spec.key_column)
        if key_target is None or key_target not in self.values or key_target in self.rules.integer_fields:
            return keys
        normalised = self.values[key_target]
        raw = pd.isna(normalised)
        if key_target in self.rules.email_fields and raw.any():
            # Where the email is not valid, the key is the text as given, in lower case.
            keys = keys.copy()
            keys[raw] = [None if key is None else key.lower() for key in keys[raw].tolist()]
        return np.where(raw, keys, normalised).astype(object)

    def contacts(self, keys: npt.NDArray[np.object_]) -> pd.DataFrame:
        """The accepted rows (see :class:`Prepared`)."""
        ok, first_row = self.rows.ok, self.first_row
        data: dict[str, Any] = {
            "key": pd.Series(keys[ok], dtype=object),
            "row": pd.Series(
                np.arange(first_row, first_row + len(self.frame), dtype=np.int64)[ok], dtype=np.int64
            ),
        }
        if self.ids is not None:
            data["id"] = pd.Series(self.ids[ok], dtype=np.int64)
        for source, target in self.spec.column_map.items():
            if target in self.values:
                column_values = self.values[target]
                if isinstance(column_values, np.ndarray):
                    data[target] = pd.Series(column_values[ok], dtype=object)
                else:
                    data[target] = pd.Series(column_values[ok], dtype="Int64")
            else:
                data[target] = pd.Series(to_objects(self.text_of(source))[ok], dtype=object)
        contacts = pd.DataFrame(data)
        contacts.index = pd.RangeIndex(len(contacts))
        return contacts

    def rejections(self, keys: npt.NDArray[np.object_]) -> tuple[list[tuple[str, str, str]], list[int]]:
        """(key, reason, detail) of the rejected rows in source order, and their source rows."""
        rejected = []
        rejected_rows = []
        for position in sorted(self.rows.reasons):
            reason, detail = self.rows.reasons[position]
            key = keys[position]
            if reason == outcomes.MISSING_KEY or key is None:
                key = f"row:{self.first_row + position}"
            rejected.append((str(key), reason, detail))
            rejected_rows.append(self.first_row + position)
        return rejected, rejected_rows
