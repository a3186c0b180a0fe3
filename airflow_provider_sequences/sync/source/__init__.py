"""The source stage: the upstream table, read as a stream of pandas frames of bounded size.

Three kinds of source: a SQL query on a database connection, a file (CSV, Parquet or JSON
Lines) on a local path or any object store ``ObjectStoragePath`` reaches, and rows handed over
by an upstream task. Each reader yields frames of at most ``chunk_size`` rows, each indexed
0..n-1, so memory stays flat however large the export. Readers are generators: nothing is
opened or queried until the first frame is requested; bad arguments are refused at once.
"""

from airflow_provider_sequences.exceptions import SourceError
from airflow_provider_sequences.sync.source.files import FILE_FORMATS, read_file_chunks
from airflow_provider_sequences.sync.source.frames import UNDECODABLE_BYTES
from airflow_provider_sequences.sync.source.records import records_chunks
from airflow_provider_sequences.sync.source.sql import read_sql_chunks

__all__ = [
    "FILE_FORMATS",
    "UNDECODABLE_BYTES",
    "SourceError",
    "read_file_chunks",
    "read_sql_chunks",
    "records_chunks",
]
