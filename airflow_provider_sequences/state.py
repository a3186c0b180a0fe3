"""Deprecated: the sync state's reading and CLI are :mod:`airflow_provider_sequences.sync_state`.

Kept so that code written against 0.1.0 (``from airflow_provider_sequences.state import
read_sync_state``) keeps working, with a warning, until 1.0.
"""

from __future__ import annotations

import warnings

from airflow_provider_sequences.sync_state import read_sync_state, state_engine

__all__ = ["read_sync_state", "state_engine"]

warnings.warn(
    "airflow_provider_sequences.state is now airflow_provider_sequences.sync_state",
    DeprecationWarning,
    stacklevel=2,
)
