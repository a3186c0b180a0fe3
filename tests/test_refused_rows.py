"""Rows refused for their data are reported by every run until their data changes, and an
unchanged night writes them to the state in a few commits, not one per chunk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from airflow_provider_sequences.sync import record
from airflow_provider_sequences.sync.outcomes import SyncResult
from airflow_provider_sequences.sync.state import create_state_engine
from airflow_provider_sequences.testing import WhippyAccount
from tests.whippy_nights import whippy_night

pytestmark = pytest.mark.usefixtures("whippy_connection")


def night(frame: pd.DataFrame, account: WhippyAccount, engine: sa.Engine, run_id: str) -> SyncResult:
    run = whippy_night(frame, account, engine, run_id=run_id, batch_size=100, timeout=30)
    run.confirm()
    return run.finish()


def test_an_unchanged_night_writes_its_refused_rows_in_slices(
    whippy_account: WhippyAccount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record, "REJECT_SLICE", 1_000)
    rows = 3_000
    frame = pd.DataFrame({"crm_id": [f"crm-{i}" for i in range(rows)], "phone": ["not a phone"] * rows})
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    first = night(frame, whippy_account, engine, "night-1")
    assert len(first.not_processed) == rows

    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _connection: commits.append(1))
    second = night(frame, whippy_account, engine, "night-2")

    # Every row is reported again, from the state, with what the first night said of it.
    again = second.not_processed
    assert len(again) == rows
    assert {outcome["reason"] for outcome in again.values()} == {"invalidPhone"}
    assert all(outcome["detail"].endswith("(unchanged since then)") for outcome in again.values())
    # 30 chunks of refused rows: one commit per chunk before, one per 1,000 rows now (and the
    # run's own bookkeeping).
    assert len(commits) < 10
