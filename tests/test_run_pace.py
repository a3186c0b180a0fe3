"""A run's pace in the runs table: what the Sequence syncs view charts against the floor.

A deferred Whippy task saves its first part's pace before it defers; the resumed task adds its
own to it. A save without a pace (the run finished, its counts) keeps the one saved.
"""

from __future__ import annotations

from pathlib import Path

from airflow_provider_sequences.sync.pace import RunPace, floor_seconds
from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine


def test_the_floor_is_when_the_last_request_may_leave() -> None:
    reply = [(100, 60.0), (3000, 3600.0)]
    assert floor_seconds(0, reply) == floor_seconds(1, reply) == floor_seconds(100, reply) == 0.0
    assert floor_seconds(101, reply) == 60.0
    # The hourly limit binds past 3,000: the 3,001st waits an hour.
    assert floor_seconds(3001, reply) == 3600.0


def test_a_runs_pace_is_kept_and_its_parts_add(tmp_path: Path) -> None:
    state = SyncState(
        create_state_engine(f"sqlite:///{tmp_path / 'state.db'}"), Scope("whippy", "org-1", "s1")
    )
    first = RunPace(write_requests=3, read_requests=2, seconds=4.5, floor_seconds=120.0)
    state.save_run("night-1", {"rows": 10}, pace=first)
    assert state.load_pace("night-1") == first
    # The run's counts saved without a pace keep the one it had.
    state.save_run("night-1", {"rows": 10, "added": 9}, finished=True)
    assert state.load_pace("night-1") == first
    resumed = RunPace(write_requests=0, read_requests=4, seconds=1.5, floor_seconds=0.0)
    state.save_run("night-1", {"rows": 10, "added": 10}, finished=True, pace=first + resumed)
    assert state.load_pace("night-1") == RunPace(3, 6, 6.0, 120.0)
    assert state.load_pace("night-2") is None


def test_the_view_reads_a_state_no_sync_has_upgraded_yet(tmp_path: Path) -> None:
    """The view never upgrades a state: at revision 0003 its runs show masked and without pace."""
    import json
    from datetime import datetime, timezone

    import sqlalchemy as sa
    from alembic import command

    from airflow_provider_sequences.sync import schema
    from airflow_provider_sequences.ui import queries

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.begin() as connection:
        command.upgrade(schema._config(connection), "0003")
        moment = datetime(2026, 12, 6, 2, tzinfo=timezone.utc)
        connection.execute(
            sa.text(
                "INSERT INTO sequence_sync_runs (service, account, sequence_id, run_id, stats, finished, "
                "started_at, updated_at) VALUES ('reply', 'a', '1', 'night-1', :stats, 1, :at, :at)"
            ),
            {"stats": json.dumps({"rows": 3}), "at": moment},
        )
    scope = queries.ScopeId("reply", "a", "1")
    [run] = queries.runs(engine, scope)
    assert (run.run_id, run.count("rows"), run.pace, run.reveal_values) == ("night-1", 3, None, False)
    assert queries.run(engine, scope, "night-1") == run
