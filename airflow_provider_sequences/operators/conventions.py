"""Airflow's conventions for the operators' settings: a setting that cannot work fails the task
without retries, ``deferrable`` follows ``[operators] default_deferrable``, and templated
booleans arrive as text."""

from __future__ import annotations

from typing import Any

try:
    from airflow.sdk import conf
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.1 has them only in airflow.configuration and airflow.exceptions
    from airflow.configuration import conf  # type: ignore[assignment,no-redef]
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

from airflow_provider_sequences.exceptions import SourceError, SyncConfigurationError

__all__ = [
    "AirflowFailException",
    "FinalSyncConfigurationError",
    "configuration_failed",
    "default_deferrable",
    "flag",
]


def flag(name: str, value: Any) -> bool:
    """A boolean parameter; templated ones arrive as text ("False", "true"), not as booleans."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", "", "none"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def default_deferrable() -> bool:
    """``[operators] default_deferrable``: what ``deferrable`` is when a task does not say."""
    return bool(conf.getboolean("operators", "default_deferrable", fallback=False))


class FinalSyncConfigurationError(SyncConfigurationError, AirflowFailException):
    """A setting that cannot work, raised so that Airflow fails the task without retrying it.

    Still a :class:`SyncConfigurationError` (and a ``ValueError``), with the message unchanged."""


def configuration_failed(exc: ValueError) -> ValueError:
    """``exc`` as an ``AirflowFailException``: a retry would fail the same way. A source that
    cannot be read now (a file not there yet, a database down) may be readable later: kept."""
    if isinstance(exc, (SourceError, AirflowFailException)):
        return exc
    failed = FinalSyncConfigurationError(*exc.args)
    failed.__cause__ = exc.__cause__
    return failed
