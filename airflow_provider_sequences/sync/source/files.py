"""The file source: CSV, Parquet or JSON Lines on a local path or any object store, optionally
compressed; its format told by its name or ``file_format``."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import zipfile
import zlib
from collections.abc import Generator
from typing import IO, Any, cast
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import pyarrow as pa

from airflow_provider_sequences.exceptions import SourceError
from airflow_provider_sequences.sync.source.formats import csv_chunks, jsonl_chunks, parquet_chunks
from airflow_provider_sequences.sync.source.frames import (
    check_chunk_size,
    finished,
    one_line,
    type_name,
)

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
    check_chunk_size(chunk_size)
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
            chunks = csv_chunks(handle, chunk_size, location)
        elif file_format == "parquet":
            chunks = parquet_chunks(handle, chunk_size)
        else:
            chunks = jsonl_chunks(handle, chunk_size, describe)
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
            yield finished(frame, location)


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
            f"cannot read a file from {type_name(path)}: expected a path, a URL string, "
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
    return one_line(str(error)) or type(error).__name__
