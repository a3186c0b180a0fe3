"""A Whippy night through the engine, on a given state: what the read-back and refused-row
tests run, without Airflow around it."""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from airflow_provider_sequences.adapters.whippy import WhippyAdapter
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import records_chunks
from airflow_provider_sequences.sync.state import Scope, SyncState
from airflow_provider_sequences.testing import WhippyAccount


def whippy_night(
    frame: pd.DataFrame,
    account: WhippyAccount,
    engine: sa.Engine,
    *,
    run_id: str = "night-1",
    batch_size: int,
    timeout: float,
) -> SyncRun:
    """Run ``frame`` (a CRM export: ``crm_id`` as the external id, and ``phone``, ``email`` where
    it has them) in chunks of ``batch_size``; its keys are left pending (call ``confirm``)."""
    adapter = WhippyAdapter(WhippyHook(), account.sequence_id, poll_interval=0.2, stable_polls=1)
    adapter.preflight()
    spec = PrepareSpec(
        column_map={"crm_id": "external_id", **{name: name for name in ("phone", "email") if name in frame}},
        key_column="crm_id",
        rules=adapter.rules,
        default_region="US",
    )
    state = SyncState(engine, Scope("whippy", "whippy_default", account.sequence_id))
    options = SyncOptions(batch_size=batch_size, enrollment_timeout=timeout)
    run = SyncRun(adapter, spec, state, run_id, options)
    run.run(records_chunks(frame.to_dict("records"), chunk_size=batch_size))
    return run
