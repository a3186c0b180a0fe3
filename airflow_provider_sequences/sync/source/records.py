"""Rows handed over by an upstream task: a DataFrame, a mapping of columns, or records."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from airflow_provider_sequences.exceptions import SourceError
from airflow_provider_sequences.sync.source.frames import (
    check_chunk_size,
    check_unique,
    finished,
    frame_from_rows,
    type_name,
)


def records_chunks(
    records: Iterable[Mapping[str, Any]] | Mapping[str, Sequence[Any]] | pd.DataFrame | None,
    *,
    chunk_size: int,
) -> Iterator[pd.DataFrame]:
    """Yield rows handed over by an upstream task as frames of at most ``chunk_size`` rows.

    ``records`` is what an upstream task returned through XCom: a list (or any iterable) of
    mappings from column name to value, a mapping from column name to a list of values, or a
    pandas ``DataFrame`` (whose index is dropped). Values keep their Python types: columns
    built from mappings hold Python objects, and a missing key is ``None``. ``None`` or an
    empty list yields one empty frame.

    Anything else raises :class:`SourceError` saying what was expected.
    """
    check_chunk_size(chunk_size)
    if records is None:
        return iter([pd.DataFrame()])
    if isinstance(records, pd.DataFrame):
        check_unique(list(records.columns), "records")
        chunks = _dataframe_chunks(records, chunk_size)
    elif isinstance(records, Mapping):
        chunks = _column_chunks(_columns(records), chunk_size)
    elif isinstance(records, (str, bytes, bytearray)) or not isinstance(records, Iterable):
        raise SourceError(f"{_EXPECTED_RECORDS}; got {type_name(records)}")
    else:
        chunks = _row_chunks(records, chunk_size)
    return (finished(frame, "records") for frame in chunks)


_EXPECTED_RECORDS = (
    "records must be a list of rows (mappings from column name to value), a mapping from "
    "column name to a list of values, or a pandas DataFrame"
)


def _dataframe_chunks(frame: pd.DataFrame, chunk_size: int) -> Iterator[pd.DataFrame]:
    yield frame.iloc[:chunk_size].reset_index(drop=True)
    for start in range(chunk_size, len(frame), chunk_size):
        yield frame.iloc[start : start + chunk_size].reset_index(drop=True)


def _columns(records: Mapping[Any, Any]) -> dict[Any, Sequence[Any]]:
    lengths = set()
    for name, values in records.items():
        if not isinstance(values, (list, tuple)):
            raise SourceError(
                f"{_EXPECTED_RECORDS}; got a mapping whose column {name!r} holds "
                f"{type_name(values)}, not a list"
            )
        lengths.add(len(values))
    if len(lengths) > 1:
        sizes = ", ".join(f"{name!r}: {len(values)}" for name, values in records.items())
        raise SourceError(f"the columns of records must have the same length; got {sizes}")
    return dict(records)


def _column_chunks(columns: dict[Any, Sequence[Any]], chunk_size: int) -> Iterator[pd.DataFrame]:
    length = len(next(iter(columns.values()), ()))
    for start in range(0, max(length, 1), chunk_size):
        stop = min(start + chunk_size, length)
        yield pd.DataFrame(
            {name: pd.Series(values[start:stop], dtype=object) for name, values in columns.items()},
            index=pd.RangeIndex(stop - start),
        )


def _row_chunks(records: Iterable[Any], chunk_size: int) -> Iterator[pd.DataFrame]:
    rows = iter(records)
    position = 0
    empty = True
    while True:
        chunk = list(itertools.islice(rows, chunk_size))
        if not chunk:
            break
        for row in chunk:
            if not isinstance(row, Mapping):
                raise SourceError(
                    f"{_EXPECTED_RECORDS}; records[{position}] is {type_name(row)}, not a mapping"
                )
            position += 1
        empty = False
        yield frame_from_rows(chunk)
    if empty:
        yield pd.DataFrame()
