"""Rows refused for their data are reported by every run until their data changes, and an
unchanged night writes them to the state in a few commits, not one per chunk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_sequences.adapters.whippy import WhippyAdapter
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync import record
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import records_chunks
from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine
from airflow_provider_sequences.testing import WhippyAccount

pytestmark = pytest.mark.usefixtures("whippy_connection")


def night(frame: pd.DataFrame, account: WhippyAccount, engine: sa.Engine, run_id: str) -> SyncRun:
    adapter = WhippyAdapter(WhippyHook(), account.sequence_id, poll_interval=0.2, stable_polls=1)
    adapter.preflight()
    spec = PrepareSpec(
        column_map={"crm_id": "external_id", "phone": "phone"},
        key_column="crm_id",
        rules=adapter.rules,
        default_region="US",
    )
    state = SyncState(engine, Scope("whippy", "whippy_default", account.sequence_id))
    run = SyncRun(adapter, spec, state, run_id, SyncOptions(batch_size=100, enrollment_timeout=30))
    run.run(records_chunks(frame.to_dict("records"), chunk_size=100))
    run.confirm()
    return run


def test_an_unchanged_night_writes_its_refused_rows_in_slices(
    whippy_account: WhippyAccount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record, "REJECT_SLICE", 1_000)
    rows = 3_000
    frame = pd.DataFrame({"crm_id": [f"crm-{i}" for i in range(rows)], "phone": ["not a phone"] * rows})
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    first = night(frame, whippy_account, engine, "night-1").finish()
    assert len(first.not_processed) == rows

    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _connection: commits.append(1))
    second = night(frame, whippy_account, engine, "night-2").finish()

    # Every row is reported again, from the state, with what the first night said of it.
    again = second.not_processed
    assert len(again) == rows
    assert {outcome["reason"] for outcome in again.values()} == {"invalidPhone"}
    assert all(outcome["detail"].endswith("(unchanged since then)") for outcome in again.values())
    # 30 chunks of refused rows: one commit per chunk before, one per 1,000 rows now (and the
    # run's own bookkeeping).
    assert len(commits) < 10
