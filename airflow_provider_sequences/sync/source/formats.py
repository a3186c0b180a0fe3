"""Reading an opened file's bytes as frames, one reader per format: CSV, Parquet, JSON Lines."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Generator, Mapping
from typing import IO, Any, cast

import pandas as pd
import pyarrow.parquet as pq

from airflow_provider_sequences.exceptions import SourceError
from airflow_provider_sequences.sync.source.frames import check_unique, frame_from_rows


def csv_chunks(handle: IO[bytes], chunk_size: int, location: str) -> Generator[pd.DataFrame, None, None]:
    # pandas renames a second ``email`` column ``email.1``, silently: the header as written is
    # read here first, then handed back to pandas with the rest of the file.
    head = _csv_header(handle)
    check_unique(head[1], location)
    handle = cast(IO[bytes], io.BufferedReader(_Replayed(head[0], handle)))
    try:
        # Only empty cells are missing: "NA" is Namibia and "None" can be a name; pandas'
        # default list of null markers would silently drop them.
        reader = pd.read_csv(handle, chunksize=chunk_size, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as error:
        raise SourceError(
            f"could not read {location} as CSV: the file is empty, not even a header row"
        ) from error
    with reader:
        yield from reader


def _csv_header(handle: IO[bytes]) -> tuple[bytes, list[str]]:
    """The bytes read up to the header row (blank lines before it included) and its names."""
    read = b""
    while len(read) < 1 << 20:
        line = handle.readline()
        read += line
        if not line or line.strip():
            break
    text = read.decode("utf-8-sig", "replace").strip()
    if not text or text.count('"') % 2:
        return read, []  # empty, or a header cell spanning lines: pandas reads it alone
    try:
        return read, next(csv.reader([text]), [])
    except csv.Error:
        return read, []  # NUL bytes, which csv refuses before Python 3.11: pandas judges the file


class _Replayed(io.RawIOBase):
    """``head`` and then the rest of ``rest``: a stream read from the start again."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head.nbytes:
            size = min(len(buffer), self._head.nbytes)
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def parquet_chunks(handle: IO[bytes], chunk_size: int) -> Generator[pd.DataFrame, None, None]:
    # pyarrow's default pre-buffering fetches every row group up front, the whole file.
    parquet = pq.ParquetFile(handle, pre_buffer=False)
    empty = True
    for batch in parquet.iter_batches(batch_size=chunk_size):
        empty = False
        yield _parquet_frame(batch.to_pandas(integer_object_nulls=True))
    if empty:
        yield _parquet_frame(parquet.schema_arrow.empty_table().to_pandas())


def _parquet_frame(frame: pd.DataFrame) -> pd.DataFrame:
    # A file written by pandas may store its index as a column: a named one (a key such as
    # ``contact_id``) is data and becomes a column again; an unnamed one is row numbering.
    if isinstance(frame.index, pd.RangeIndex) and frame.index.name is None:
        return frame
    named = any(name is not None for name in frame.index.names)
    return frame.reset_index(drop=not named)


def jsonl_chunks(handle: IO[bytes], chunk_size: int, describe: str) -> Generator[pd.DataFrame, None, None]:
    # Parsed line by line rather than with pandas.read_json: read_json turns an integer
    # column with a null into floats (1 -> 1.0, and ids past 2**53 change), reports errors
    # without a line number, and accepts lines that are not objects.
    text = io.TextIOWrapper(handle, encoding="utf-8-sig")
    lines = enumerate(text, start=1)
    empty = True
    while True:
        rows: list[Mapping[str, Any]] = []
        for number, line in lines:
            if not line.strip():
                continue
            rows.append(_json_object(line, number, describe))
            if len(rows) == chunk_size:
                break
        if not rows:
            break
        empty = False
        yield frame_from_rows(rows)
    if empty:
        yield pd.DataFrame()


def _json_object(line: str, number: int, describe: str) -> dict[str, Any]:
    try:
        value = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as error:
        raise SourceError(
            f"{describe}: line {number} is not valid JSON ({error.msg} at column {error.colno})"
        ) from error
    if not isinstance(value, dict):
        raise SourceError(
            f"{describe}: line {number} holds a JSON {_json_kind(value)}, not an object; "
            f"JSON Lines has one object per line"
        )
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"
