"""The source stage: the upstream table, read as a stream of pandas frames of bounded size.

Three kinds of source: a SQL query on a database connection, a file (CSV, Parquet or JSON
Lines) on a local path or any object store ``ObjectStoragePath`` reaches, and rows handed over
by an upstream task. Each reader yields frames of at most ``chunk_size`` rows, each indexed
0..n-1, so memory stays flat however large the export. Readers are generators: nothing is
opened or queried until the first frame is requested; bad arguments are refused at once.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import zipfile
import zlib
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, cast
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_sequences.exceptions import SourceError

__all__ = ["FILE_FORMATS", "SourceError", "read_file_chunks", "read_sql_chunks", "records_chunks"]

#: The file formats ``read_file_chunks`` reads.
FILE_FORMATS = ("csv", "parquet", "jsonl")

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip")
_FORMAT_NAMES = {"csv": "CSV", "parquet": "Parquet", "jsonl": "JSON Lines"}

# What reading a file can raise when the file is missing, unreadable, or not what its name says.
# ValueError covers pandas' parser errors, UnicodeDecodeError and pyarrow's ArrowInvalid.
_FILE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    pa.ArrowException,
)


def read_sql_chunks(
    connection: Any,
    sql: str,
    *,
    chunk_size: int,
    parameters: Mapping[str, Any] | Sequence[Any] | None = None,
) -> Generator[pd.DataFrame, None, None]:
    """Run ``sql`` and yield its result as frames of at most ``chunk_size`` rows.

    ``connection`` is a SQLAlchemy ``Engine`` or ``Connection``, or a DB-API 2 connection
    (``sqlite3``, ``psycopg2``, ...), for instance from an Airflow ``DbApiHook``. It is not
    closed here. ``parameters`` are bound by the driver, in its own placeholder style.

    An empty result yields one empty frame that still has the query's columns. A failing
    query (syntax error, missing table, lost connection) raises :class:`SourceError` with the
    database's own message. Close the generator to stop early and end the query.
    """
    _check_chunk_size(chunk_size)
    return _read_sql(connection, sql, chunk_size, parameters)


def _read_sql(
    connection: Any,
    sql: str,
    chunk_size: int,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
) -> Generator[pd.DataFrame, None, None]:
    errors = _database_errors(connection)
    try:
        chunks = iter(pd.read_sql(sql, connection, params=parameters, chunksize=chunk_size))
    except errors as error:
        raise SourceError(f"the source query failed: {_database_message(error)}") from error
    # Closing pandas' generator ends the query and gives an engine's connection back to its
    # pool when the caller stops early.
    with contextlib.closing(chunks):
        while True:
            try:
                frame = next(chunks)
            except StopIteration:
                return
            except errors as error:
                raise SourceError(f"the source query failed: {_database_message(error)}") from error
            yield _finished(frame, "the query's result")


def _database_errors(connection: Any) -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [pd.errors.DatabaseError]
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # pragma: no cover - SQLAlchemy comes with Airflow
        pass
    else:
        errors.append(SQLAlchemyError)
    # DB-API 2 drivers may expose their exception base on the connection (sqlite3 and
    # psycopg2 do); errors raised while fetching reach us unwrapped.
    driver_error = getattr(connection, "Error", None)
    if isinstance(driver_error, type) and issubclass(driver_error, Exception):
        errors.append(driver_error)
    return tuple(errors)


def _database_message(error: BaseException) -> str:
    # pandas and SQLAlchemy wrap the driver's exception and repeat the SQL around its
    # message; the driver's own words are what a person needs.
    innermost = error
    seen = {id(error)}
    while True:
        original = getattr(innermost, "orig", None)
        inner = original if isinstance(original, BaseException) else innermost.__cause__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        innermost = inner
    return _one_line(str(innermost)) or type(innermost).__name__


def read_file_chunks(
    path: str | os.PathLike[str] | Any,
    *,
    chunk_size: int,
    file_format: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Generator[pd.DataFrame, None, None]:
    """Read a CSV, Parquet or JSON Lines file and yield frames of at most ``chunk_size`` rows.

    ``path`` is a local path, a URL string (``s3://bucket/contacts.csv``, opened through
    fsspec with ``storage_options``), or any object with ``open("rb")`` and a ``name``, such
    as an Airflow ``ObjectStoragePath``, which carries its own connection.

    ``file_format`` is ``"csv"``, ``"parquet"`` or ``"jsonl"``; when omitted it follows the
    file name: ``.csv``, ``.parquet`` or ``.pq``, ``.jsonl``, ``.ndjson`` or ``.json`` (read
    as JSON Lines, one object per line). CSV and JSON Lines may be compressed (``.gz``,
    ``.bz2``, ``.xz``, or a ``.zip`` holding one file).

    - CSV: every value is text, so phone numbers keep leading zeros and plus signs and ids
      stay exact; empty cells and the usual markers (``NA``, ``NULL``, ...) are missing.
    - Parquet: the file's own types, read one batch at a time, never the whole file.
    - JSON Lines: values keep their JSON types (integers stay integers even next to nulls);
      columns hold Python objects, a missing key or ``null`` is ``None``.

    A missing or unreadable file, or a file that is not in the expected format, raises
    :class:`SourceError` naming the file and the reason. Close the generator to stop early
    and close the file.
    """
    _check_chunk_size(chunk_size)
    _check_path(path)
    location = _location(path)
    name = _file_name(path)
    resolved = _resolve_format(file_format, name, location)
    compression = _compression(name)
    if resolved == "parquet" and compression is not None:
        raise SourceError(
            f"cannot read {location}: a Parquet file compresses its own data and cannot be read "
            f"through {compression} compression; decompress it first"
        )
    if storage_options is not None and not _is_url(path):
        raise SourceError(
            f"storage_options apply only to a URL string such as 's3://bucket/contacts.csv', "
            f"not to {location}; an ObjectStoragePath carries its own connection"
        )
    return _read_file(path, location, resolved, compression, chunk_size, storage_options)


def _read_file(
    path: Any,
    location: str,
    file_format: str,
    compression: str | None,
    chunk_size: int,
    storage_options: dict[str, Any] | None,
) -> Generator[pd.DataFrame, None, None]:
    describe = f"could not read {location} as {_FORMAT_NAMES[file_format]}"
    with contextlib.ExitStack() as stack:
        try:
            handle = stack.enter_context(_open_binary(path, storage_options))
            if compression is not None:
                handle = stack.enter_context(_decompressed(handle, compression, location))
        except SourceError:
            raise
        except _FILE_ERRORS as error:
            raise SourceError(f"could not open {location}: {_file_reason(error)}") from error
        if file_format == "csv":
            chunks = _csv_chunks(handle, chunk_size, location)
        elif file_format == "parquet":
            chunks = _parquet_chunks(handle, chunk_size)
        else:
            chunks = _jsonl_chunks(handle, chunk_size, describe)
        stack.enter_context(contextlib.closing(chunks))
        while True:
            try:
                frame = next(chunks)
            except StopIteration:
                return
            except SourceError:
                raise
            except _FILE_ERRORS as error:
                raise SourceError(f"{describe}: {_file_reason(error)}") from error
            yield _finished(frame, location)


def _open_binary(path: Any, storage_options: dict[str, Any] | None) -> IO[bytes]:
    if isinstance(path, str):
        if _is_url(path):
            import fsspec  # Airflow's object storage is built on fsspec.

            opened: IO[bytes] = fsspec.open(path, "rb", **(storage_options or {})).open()
            return opened
        return open(path, "rb")
    if callable(getattr(path, "open", None)):
        opened = path.open("rb")
        return opened
    return open(os.fspath(path), "rb")


def _check_path(path: Any) -> None:
    if not isinstance(path, (str, os.PathLike)) and not callable(getattr(path, "open", None)):
        raise SourceError(
            f"cannot read a file from {_type_name(path)}: expected a path, a URL string, "
            f"or an object with open('rb') such as ObjectStoragePath"
        )


def _decompressed(handle: IO[bytes], compression: str, location: str) -> IO[bytes]:
    if compression == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=handle, mode="rb"))
    if compression == "bz2":
        return cast(IO[bytes], bz2.BZ2File(handle, mode="rb"))
    if compression == "xz":
        return cast(IO[bytes], lzma.LZMAFile(handle, mode="rb"))
    archive = zipfile.ZipFile(handle)
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) != 1:
        archive.close()
        raise SourceError(
            f"could not read {location}: the zip archive holds {len(members)} files; expected exactly one"
        )
    # The archive reads from ``handle``, which the caller closes.
    return archive.open(members[0])


def _csv_chunks(handle: IO[bytes], chunk_size: int, location: str) -> Generator[pd.DataFrame, None, None]:
    # pandas renames a second ``email`` column ``email.1``, silently: the header as written is
    # read here first, then handed back to pandas with the rest of the file.
    head = _csv_header(handle)
    _check_unique(head[1], location)
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


def _parquet_chunks(handle: IO[bytes], chunk_size: int) -> Generator[pd.DataFrame, None, None]:
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


def _jsonl_chunks(handle: IO[bytes], chunk_size: int, describe: str) -> Generator[pd.DataFrame, None, None]:
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
        yield _frame_from_rows(rows)
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
    _check_chunk_size(chunk_size)
    if records is None:
        return iter([pd.DataFrame()])
    if isinstance(records, pd.DataFrame):
        _check_unique(list(records.columns), "records")
        chunks = _dataframe_chunks(records, chunk_size)
    elif isinstance(records, Mapping):
        chunks = _column_chunks(_columns(records), chunk_size)
    elif isinstance(records, (str, bytes, bytearray)) or not isinstance(records, Iterable):
        raise SourceError(f"{_EXPECTED_RECORDS}; got {_type_name(records)}")
    else:
        chunks = _row_chunks(records, chunk_size)
    return (_finished(frame, "records") for frame in chunks)


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
                f"{_type_name(values)}, not a list"
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
                    f"{_EXPECTED_RECORDS}; records[{position}] is {_type_name(row)}, not a mapping"
                )
            position += 1
        empty = False
        yield _frame_from_rows(chunk)
    if empty:
        yield pd.DataFrame()


def _frame_from_rows(rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    # Object columns keep each value as it came (an int stays an int next to a None) and
    # columns appear in the order their names first appear.
    names: dict[Any, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return pd.DataFrame(
        {name: pd.Series([row.get(name) for row in rows], dtype=object) for name in names},
        index=pd.RangeIndex(len(rows)),
    )


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive whole number of rows, got {chunk_size!r}")


#: What an undecodable ``bytes`` value becomes: text no source holds (U+FFFE is a
#: noncharacter), so the prepare stage gives its row a reason instead of sending it.
UNDECODABLE_BYTES = "\ufffeundecodable-bytes:"


def _finished(frame: pd.DataFrame, location: str) -> pd.DataFrame:
    """A frame as every reader yields it: names unique, ``bytes`` as text, indexed from 0."""
    _check_unique(list(frame.columns), location)
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object and pd.api.types.infer_dtype(column, skipna=True) in ("bytes", "mixed"):
            frame[name] = column.map(_bytes_text, na_action="ignore").astype(object)
    return _indexed_from_zero(frame)


def _bytes_text(value: Any) -> Any:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    data = bytes(value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return UNDECODABLE_BYTES + hashlib.blake2b(data, digest_size=8).hexdigest()


def _check_unique(names: list[Any], location: str) -> None:
    seen: set[str] = set()
    doubled: list[str] = []
    for name in names:
        text = str(name)
        if text in seen and text not in doubled:
            doubled.append(text)
        seen.add(text)
    if doubled:
        raise SourceError(
            f"{location} has more than one column named {', '.join(map(repr, doubled))}: rename or "
            "drop the extra ones, so that it is clear which one holds the data"
        )


def _indexed_from_zero(frame: pd.DataFrame) -> pd.DataFrame:
    index = frame.index
    if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None):
        frame.index = pd.RangeIndex(len(frame))
    return frame


def _resolve_format(file_format: str | None, name: str, location: str) -> str:
    accepted = ", ".join(repr(known) for known in FILE_FORMATS)
    if file_format is not None:
        normalised = file_format.strip().lower()
        if normalised not in FILE_FORMATS:
            raise SourceError(f"unknown file_format {file_format!r}; expected one of {accepted}")
        return normalised
    lowered = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lowered.endswith(suffix):
            lowered = lowered[: -len(suffix)]
            break
    for suffix, known in _SUFFIX_FORMATS.items():
        if lowered.endswith(suffix):
            return known
    suffixes = ", ".join(_SUFFIX_FORMATS)
    raise SourceError(
        f"cannot tell the format of {location} from its name (known endings: {suffixes}, "
        f"optionally followed by {', '.join(_COMPRESSION_SUFFIXES)}); pass file_format as one of {accepted}"
    )


def _compression(name: str) -> str | None:
    lowered = name.lower()
    methods = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zip": "zip"}
    for suffix, method in methods.items():
        if lowered.endswith(suffix):
            return method
    return None


def _is_url(path: Any) -> bool:
    return isinstance(path, str) and "://" in path


def _file_name(path: Any) -> str:
    if isinstance(path, str):
        return urlsplit(path).path if _is_url(path) else path
    name = getattr(path, "name", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(path, os.PathLike):
        return str(os.fspath(path))
    return str(path)


def _location(path: Any) -> str:
    text = str(os.fspath(path)) if isinstance(path, os.PathLike) else str(path)
    if _is_url(text):
        # A signed URL carries its credentials in the query; a password may sit in the netloc.
        parts = urlsplit(text)
        netloc = parts.netloc.rpartition("@")[2] if parts.password else parts.netloc
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return text


def _file_reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "it is a directory, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, UnicodeDecodeError):
        return f"it is not UTF-8 text ({error})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return _one_line(str(error)) or type(error).__name__


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _type_name(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"
