"""Source columns as Arrow text, and the small Arrow helpers the checks share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Mask = npt.NDArray[np.bool_]

#: Every character ``str.strip()`` removes (``str.isspace``); Arrow's own notion differs.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

TEXT = pa.large_string()
_NULL_TEXT = pa.scalar(None, type=TEXT)


@dataclass
class CheckedColumn:
    """A normalised column: values (``None`` where missing or bad) and why bad rows are bad."""

    values: npt.NDArray[np.object_]
    bad: Mask
    details: dict[int, str]


def valid_mask(array: pa.Array) -> Mask:
    """True where the array has a value."""
    return bool_mask(pc.is_valid(array))


def bool_mask(array: pa.Array) -> Mask:
    """A boolean Arrow array as numpy, nulls as False."""
    result: Mask = array.fill_null(False).to_numpy(zero_copy_only=False)
    return result


def text_lengths(array: pa.Array) -> npt.NDArray[np.int64]:
    """Characters per value (code points, as ``len``); 0 for nulls."""
    result: npt.NDArray[np.int64] = (
        pc.utf8_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    )
    return result


def to_objects(array: pa.Array) -> npt.NDArray[np.object_]:
    """An Arrow string array as a numpy object array of ``str`` and ``None``."""
    result: npt.NDArray[np.object_] = array.to_numpy(zero_copy_only=False).astype(object, copy=False)
    return result


def column_text(series: pd.Series) -> pa.Array:
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
        return _flat(pa.array(series.array)).cast(TEXT)
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iu":
            return pa.array(series.to_numpy()).cast(TEXT)
        if dtype.kind == "f":
            return _float_text(series.to_numpy(dtype=np.float64))
        if dtype.kind == "b":
            return pa.array(np.where(series.to_numpy(), "True", "False"), type=TEXT)
        if dtype.kind == "O":
            return _object_text(series.to_numpy())
    if pd.api.types.is_integer_dtype(dtype):
        return _flat(pa.array(series.array)).cast(TEXT)
    if pd.api.types.is_float_dtype(dtype):
        return _float_text(series.to_numpy(dtype=np.float64, na_value=np.nan))
    return _object_text(series.to_numpy(dtype=object))


def _float_text(values: npt.NDArray[np.float64]) -> pa.Array:
    """Floats as text: integral ones as integers (4155550123.0 -> "4155550123"), NaN as null."""
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(values) & (np.trunc(values) == values) & (np.abs(values) < 2**63)
    whole = np.where(integral, values, 0).astype(np.int64)
    text = pa.array(whole, mask=~integral).cast(TEXT)
    other = ~integral & ~np.isnan(values)
    if other.any():
        text = pc.replace_with_mask(
            text, pa.array(other), pa.array([_float_str(v) for v in values[other].tolist()], type=TEXT)
        )
    return text


def _float_str(value: float) -> str:
    if math.isfinite(value) and value.is_integer():
        return str(int(value))
    return repr(value)


def _object_text(values: npt.NDArray[Any]) -> pa.Array:
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind == "empty":
        return pa.nulls(len(values), type=TEXT)
    if kind == "string":
        try:
            return pa.array(values, type=TEXT, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, UnicodeError):
            pass  # NaT among strings, or a lone surrogate: go value by value
    texts = [_value_text(value) for value in values.tolist()]
    try:
        return pa.array(texts, type=TEXT)
    except (pa.ArrowException, UnicodeError):
        return pa.array([_encodable(text) for text in texts], type=TEXT)


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
        return _decimal_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        missing = pd.isna(value)
    except (TypeError, ValueError):
        missing = False
    if isinstance(missing, (bool, np.bool_)) and missing:
        return None
    return str(value)


def _decimal_text(value: Decimal) -> str | None:
    """A decimal as text: integral ones as integers, NaN as ``None``."""
    if value.is_nan():
        return None
    if value.is_finite() and value.adjusted() < 40 and value == value.to_integral_value():
        return str(int(value))
    return str(value)
