"""Fuzzing prepare and plan: rows of arbitrary strings, Unicode, floats and None, against a
sync state holding arbitrary earlier outcomes for some of their keys.

A dry run (real :class:`SyncState` on SQLite, nothing sent) must not crash, must account for
every row exactly once, and must plan the same way every time it sees the same input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_sequences.adapters.reply import ReplyAdapter
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import records_chunks
from airflow_provider_sequences.sync.state import (
    ADDED,
    NOT_PROCESSED,
    PENDING,
    SENDING,
    KeyOutcome,
    Scope,
    SyncState,
    create_state_engine,
)

COLUMN_MAP = {"email": "email", "phone": "phone", "first": "firstName", "tier": "customFields.Tier"}

junk = st.one_of(
    st.none(),
    st.just(float("nan")),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300).filter(lambda t: len(t) != 30),
    st.sampled_from(["", " ", "\t", "1.5e9", "ada@example.com", " Ada@Example.COM ", "+1 415 555 0101"]),
)
keys = st.one_of(st.sampled_from(["a", "b", "c", "1", "1.0", " a", ""]), junk)
row = st.fixed_dictionaries({"id": keys, "email": junk, "phone": junk, "first": junk, "tier": junk})
earlier = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "1"]),
        st.sampled_from([ADDED, NOT_PROCESSED, SENDING, PENDING]),
        st.sampled_from(["invalidEmail", "requestFailed", "contactNotFound"]),
        st.integers(min_value=0, max_value=7),
    ),
    max_size=4,
)


def dry_run(rows: list[dict[str, Any]], history: list[Any], folder: Path, name: str) -> dict[str, Any]:
    engine = create_state_engine(f"sqlite:///{folder / name}.db")
    try:
        state = SyncState(engine, Scope("reply", "reply_default", "1001"))
        for key, status, reason, attempts in history:
            for _ in range(attempts):
                state.record([KeyOutcome(key, SENDING)], "earlier")
            state.record([KeyOutcome(key, status, reason, "detail", fingerprint="f")], "earlier")
        adapter = ReplyAdapter(ReplyHook("reply_default"), 1001)
        spec = PrepareSpec(column_map=COLUMN_MAP, key_column="id", rules=adapter.rules, default_region="US")
        run = SyncRun(adapter, spec, state, "fuzz", SyncOptions(batch_size=2, dry_run=True))
        run.run(records_chunks(rows, chunk_size=3))
        value = run.finish().to_xcom()
        value["would_send"] = list(run.would_send)
        return value
    finally:
        engine.dispose()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=0, max_size=8), history=earlier)
def test_prepare_and_plan_never_crash_account_for_every_row_and_are_deterministic(
    tmp_path_factory: Any, rows: list[dict[str, Any]], history: list[Any]
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    first = dry_run(rows, history, folder, "one")
    second = dry_run(rows, history, folder, "two")

    assert first == second
    stats = first["stats"]
    sent, not_processed = first["would_send"], first["not_processed"]
    assert first["added"] == []  # a dry run enrols nobody
    assert len(set(sent)) == len(sent)
    assert not set(sent) & set(not_processed)
    assert stats["rows"] == len(rows)
    # Keys an earlier run left pending are reported enrollmentUnconfirmed, not dropped.
    accounted = len(sent) + len(not_processed) + stats["duplicates"] + stats["unchanged"]
    assert stats["rows"] == accounted
    for outcome in not_processed.values():
        assert outcome["reason"]
        assert isinstance(outcome["detail"], str)
    # Keys are text, and the frame they came from can be rebuilt (nothing was mangled into NaN).
    assert all(isinstance(key, str) for key in [*sent, *not_processed])
    pd.DataFrame(rows)
