"""Where an operator's rows come from: a query through a common-sql ``DbApiHook``, a file (local
or object storage), or rows an upstream task passed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
from airflow.providers.common.sql.hooks.sql import DbApiHook
from airflow.sdk import BaseHook

from airflow_provider_sequences.exceptions import SyncConfigurationError
from airflow_provider_sequences.sync.source import read_file_chunks, read_sql_chunks, records_chunks


def source_chunks(
    *,
    sql: str | None,
    source_conn_id: str | None,
    source_path: Any,
    file_format: str | None,
    contacts: Any,
    chunk_size: int,
) -> Iterator[pd.DataFrame]:
    """The source, chunk by chunk."""
    if sql is not None:
        connection = BaseHook.get_connection(str(source_conn_id))
        hook = connection.get_hook()
        if not isinstance(hook, DbApiHook):
            raise SyncConfigurationError(
                f"source_conn_id {source_conn_id!r} is a {connection.conn_type!r} connection, "
                "not a database: sql needs a connection whose hook is a DbApiHook (postgres, "
                "sqlite, mysql, ...)"
            )
        return read_sql_chunks(hook.get_sqlalchemy_engine(), sql, chunk_size=chunk_size)
    if source_path is not None:
        path: Any = source_path
        if "://" in str(path):
            from airflow.sdk import ObjectStoragePath

            path = ObjectStoragePath(str(path), conn_id=source_conn_id)
        return read_file_chunks(path, chunk_size=chunk_size, file_format=file_format)
    return iter(records_chunks(contacts, chunk_size=chunk_size))
