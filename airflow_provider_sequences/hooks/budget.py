"""One rate budget per account, shared by every process (and machine) that uses the account.

The services count requests per account (Reply: per acting user; Whippy: per key and
organization), whoever sends them, so N tasks each limiting themselves to the documented rate
would spend N times it. Every hook therefore draws from a pyrate-limiter bucket that lives
outside the process:

- by default a SQLite file, ``sequence_rate_budget.db`` under ``AIRFLOW_HOME``, behind a file
  lock: shared by every process of one machine (LocalExecutor, one Celery worker host);
- a ``postgres`` connection (``rate_limit_conn_id``; by default the operators' ``state_conn_id``
  when that is PostgreSQL): a table per account in that database, shared across machines;
- a ``redis`` connection: a key per account on that server, shared across machines;
- a ``sqlite`` connection: a SQLite file of your choosing (one machine, or a shared disk).

The buckets hold request timestamps only, never a key. 429s caused by other clients of the
same account are still retried by the hook (waiting what the service asks).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrate_limiter import AbstractBucket, Duration, Limiter, Rate, SQLiteBucket

#: The machine-wide budget file under ``AIRFLOW_HOME``.
BUDGET_FILE = "sequence_rate_budget.db"

_limiters: dict[tuple[str, ...], Limiter] = {}
_lock = threading.Lock()


def budget_name(scope: str, bucket: str) -> str:
    """A table or key name for one account's bucket: a digest, so nothing about the account
    (and nothing a credential could be derived from) is spelled out in it."""
    return "budget_" + hashlib.sha256(f"{scope}\x1f{bucket}".encode()).hexdigest()[:24]


def default_budget_path() -> Path:
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / BUDGET_FILE


def shared_limiter(
    scope: str,
    bucket: str,
    limits: tuple[tuple[int, float], ...],
    *,
    time_scale: float = 1.0,
    backend: str = "sqlite",
    location: str | None = None,
    connect: Callable[[], Any] | None = None,
) -> Limiter:
    """The limiter of one account's bucket of endpoints, made once per process.

    :param scope: the account (``SequencesHook.rate_limit_scope``).
    :param bucket: the family of endpoints (the service's own tiers).
    :param limits: (requests, seconds) pairs the service documents.
    :param time_scale: simulated seconds per real second (simulators only).
    :param backend: ``sqlite`` (a file, one machine), ``postgres``, ``redis`` or ``memory``
        (this process only).
    :param location: where the budget lives: the SQLite file, the database URL or the Redis URL.
    :param connect: for ``postgres`` and ``redis``, builds the client (a psycopg pool, a Redis
        client) the first time this process needs it.
    """
    key = (backend, location or "", scope, bucket, repr((limits, time_scale)))
    with _lock:
        limiter = _limiters.get(key)
        if limiter is None:
            rates = [Rate(count, _window_ms(seconds / time_scale)) for count, seconds in limits]
            limiter = Limiter(_bucket(backend, location, connect, rates, budget_name(scope, bucket)))
            _limiters[key] = limiter
        return limiter


def _bucket(
    backend: str, location: str | None, connect: Callable[[], Any] | None, rates: list[Rate], name: str
) -> AbstractBucket:
    if backend == "memory":
        from pyrate_limiter import InMemoryBucket

        return InMemoryBucket(rates)
    if backend == "sqlite":
        path = Path(location) if location else default_budget_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        return SQLiteBucket.init_from_file(rates, table=name, db_path=str(path), use_file_lock=True)
    if backend == "postgres":
        from pyrate_limiter import PostgresBucket

        assert connect is not None
        return PostgresBucket(connect(), name, rates)
    if backend == "redis":
        from pyrate_limiter import RedisBucket

        assert connect is not None
        bucket: AbstractBucket = RedisBucket.init(rates, connect(), name)
        return bucket
    raise ValueError(f"unknown rate budget backend {backend!r}: use sqlite, postgres, redis or memory")


def _window_ms(seconds: float) -> int:
    """A limit's window as the client keeps it: a little longer than the service's.

    The client stamps a request when it sends it, the service when it arrives; if the first
    request of a window arrived late (a new connection, a busy server) and a later one early,
    the service would count one too many. One second per minute (at least 250 ms) absorbs
    that skew and costs under 2% of the throughput the limits allow.
    """
    return int((seconds + max(seconds / 60, 0.25)) * Duration.SECOND)


def backend_of(connection: Any) -> tuple[str, str | None, Callable[[], Any] | None]:
    """``(backend, location, connect)`` for an Airflow connection of type ``postgres``,
    ``redis`` or ``sqlite`` (what ``rate_limit_conn_id`` names)."""
    conn_type = str(connection.conn_type or "").lower()
    conn_id = str(connection.conn_id)
    if conn_type in ("postgres", "postgresql"):

        def connect_postgres() -> Any:
            from psycopg.conninfo import make_conninfo
            from psycopg_pool import ConnectionPool

            info = make_conninfo(
                host=connection.host or "localhost",
                port=str(connection.port or 5432),
                user=connection.login or None,
                password=connection.password or None,
                dbname=connection.schema or None,
            )
            return ConnectionPool(info, min_size=1, max_size=4, open=True)

        return "postgres", conn_id, connect_postgres
    if conn_type == "redis":

        def connect_redis() -> Any:
            import redis

            extra = connection.extra_dejson or {}
            return redis.Redis(
                host=connection.host or "localhost",
                port=int(connection.port or 6379),
                db=int(extra.get("db", 0)),
                username=connection.login or None,
                password=connection.password or None,
                ssl=bool(extra.get("ssl", False)),
            )

        return "redis", conn_id, connect_redis
    if conn_type == "sqlite":
        return "sqlite", str(connection.host or default_budget_path()), None
    raise ValueError(
        f"rate_limit_conn_id {conn_id!r} is a {conn_type or 'untyped'} connection: the rate budget "
        "lives in PostgreSQL, Redis or SQLite"
    )
