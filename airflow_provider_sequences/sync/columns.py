"""Column checks of the prepare stage, and the details a rejected row gets from them.

Each check takes a whole column (text as Arrow, or the source column) and answers a mask:
whether a key is an inexact float, holds undecodable bytes, an integer field's numbers.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_sequences.sync.source import UNDECODABLE_BYTES
from airflow_provider_sequences.sync.text import Mask, bool_mask, valid_mask

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


def undecodable(text: pa.Array) -> Mask:
    return bool_mask(pc.starts_with(text, UNDECODABLE_BYTES))


def bytes_detail(source: str, position: int) -> str:
    return f"column {source!r} holds bytes that are not UTF-8 text; decode them in the source"


#: Value kinds (``pandas.api.types.infer_dtype``) that cannot hold a nested value.
_SCALAR_KINDS = frozenset(
    {"empty", "string", "integer", "floating", "mixed-integer-float", "boolean", "decimal", "bytes"}
    | {"datetime", "datetime64", "date", "time", "timedelta", "timedelta64", "period", "integer-na"}
)


def check_scalars(column: pd.Series, name: str, service: str) -> None:
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


def inexact(column: pd.Series) -> Mask:
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


def inexact_detail(key_column: str, first_row: int, position: int) -> str:
    return (
        f"row {first_row + position} has a key in column {key_column!r} stored as a floating point "
        "number too large to be exact (beyond 2**53), so two keys could merge into one: cast the key "
        "column to text (or a 64-bit integer) in the source"
    )


def missing_detail(target: str, source: str, position: int) -> str:
    return f"{target} is empty (column {source!r})"


def integer_detail(target: str, text: pa.Array, position: int) -> str:
    return f"{target} must be a whole number; got {shown_value(text, position)!r}"


def length_detail(target: str, lengths: npt.NDArray[np.int64], limit: int, service: str, i: int) -> str:
    who = service or "the service"
    return f"{target} is {int(lengths[i])} characters; {who} accepts at most {limit}"


def shown_value(array: pa.Array, position: int) -> str:
    value = array[position].as_py()
    return "" if value is None else str(value)


def integers(text: pa.Array, *, positive: bool) -> tuple[npt.NDArray[np.int64], Mask]:
    """Whole numbers in int64 from text ("12", "12.0", "1.5e9"); the mask marks good values."""
    size = len(text)
    numbers = np.zeros(size, dtype=np.int64)
    good = bool_mask(pc.match_substring_regex(text, r"^-?[0-9]{1,18}$"))
    if good.any():
        numbers[good] = pc.cast(text.filter(pa.array(good)), pa.int64()).to_numpy()
    rest = np.flatnonzero(valid_mask(text) & ~good)
    if rest.size:
        parsed = {value: to_integer(value) for value in dict.fromkeys(text.take(pa.array(rest)).to_pylist())}
        for position, value in zip(rest.tolist(), text.take(pa.array(rest)).to_pylist(), strict=True):
            number = parsed[value]
            if number is not None:
                numbers[position] = number
                good[position] = True
    if positive:
        good &= numbers > 0
    return numbers, good


def to_integer(text: str) -> int | None:
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number.adjusted() > 18 or number != number.to_integral_value():
        return None
    value = int(number)
    return value if _INT64_MIN <= value <= _INT64_MAX else None
