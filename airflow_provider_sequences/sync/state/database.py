"""The sync state's database: where it is by default, and an engine set up for it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import tenacity


def default_state_url(airflow_home: str | Path) -> str:
    """The embedded default: a SQLite file under ``AIRFLOW_HOME``."""
    return f"sqlite:///{Path(airflow_home) / 'sequence_sync_state.db'}"


def create_state_engine(url: str) -> sa.Engine:
    """An engine for the state database, with SQLite set up for concurrent writers."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets readers and one writer work at once; several mapped tasks share the file.
            cursor = dbapi_connection.cursor()
            _use_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Outcomes land at random places of the key index, so every batch dirties about a
            # page per key. A cache of 32 MB (not 2) keeps the index's upper levels and recent
            # leaves in memory, and a checkpoint every 10,000 WAL pages (not 1,000) copies a
            # page written by several batches once, with a tenth of the fsyncs.
            cursor.execute("PRAGMA cache_size=-32768")
            cursor.execute("PRAGMA wal_autocheckpoint=10000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _locked(error: BaseException) -> bool:
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


@tenacity.retry(
    retry=tenacity.retry_if_exception(_locked),
    wait=tenacity.wait_random(0.01, 0.2),
    stop=tenacity.stop_after_delay(60),
    reraise=True,
)
def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (it stays so). SQLite answers "database is locked" at once, without
    waiting its busy timeout, when another process opens a new state file at the same moment:
    two mapped tasks starting on a fresh state. So the switch is tried again for up to 60 s."""
    cursor.execute("PRAGMA journal_mode=WAL")
