"""The SQL source: a query on a database connection, read in chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import pandas as pd

from airflow_provider_sequences.exceptions import SourceError
from airflow_provider_sequences.sync.source.frames import (
    check_chunk_size,
    finished,
    one_line,
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
    check_chunk_size(chunk_size)
    return _read_sql(connection, sql, chunk_size, parameters)


def _read_sql(
    connection: Any,
    sql: str,
    chunk_size: int,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
) -> Generator[pd.DataFrame, None, None]:
    errors = _database_errors(connection)
    with contextlib.ExitStack() as stack:
        if _is_engine(connection):
            # A connection of its own that streams the result (a server-side cursor on
            # PostgreSQL and MySQL): a driver's default cursor holds the whole result in the
            # worker's memory before the first chunk, ten million rows included.
            try:
                connection = stack.enter_context(connection.connect()).execution_options(
                    stream_results=True, max_row_buffer=chunk_size
                )
            except errors as error:
                raise SourceError(f"the source query failed: {_database_message(error)}") from error
        yield from _frames(connection, sql, chunk_size, parameters, errors)


def _is_engine(connection: Any) -> bool:
    try:
        from sqlalchemy import Engine
    except ImportError:  # pragma: no cover - SQLAlchemy comes with Airflow
        return False
    return isinstance(connection, Engine)


def _frames(
    connection: Any,
    sql: str,
    chunk_size: int,
    parameters: Mapping[str, Any] | Sequence[Any] | None,
    errors: tuple[type[BaseException], ...],
) -> Generator[pd.DataFrame, None, None]:
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
            yield finished(frame, "the query's result")


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
    return one_line(str(innermost)) or type(innermost).__name__
