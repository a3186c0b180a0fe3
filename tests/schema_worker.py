"""A worker that opens a sync state, for tests that start several at once (spawned processes
import only this, not a test module and Airflow)."""

from __future__ import annotations

from typing import Any

from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine


def open_state_together(url: str, barrier: Any, results: Any) -> None:
    """Wait for the others, then open the state (which upgrades it); report "ok" or the error."""
    engine = create_state_engine(url)
    barrier.wait()
    try:
        SyncState(engine, Scope("reply", "reply_default", "1001"))
        results.put("ok")
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"{type(exc).__name__}: {exc}")
