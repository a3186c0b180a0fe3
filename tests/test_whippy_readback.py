"""Whippy's read-back at scale: the pending keys of a night are held as hashes, read from the
state in slices, and every key is still found (or declared absent) as before."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_sequences.adapters.whippy.identities import _SEP
from airflow_provider_sequences.adapters.whippy.readback import Waiting
from airflow_provider_sequences.sync import record
from airflow_provider_sequences.sync.pending import PendingSet
from airflow_provider_sequences.sync.state import create_state_engine
from airflow_provider_sequences.testing import WhippyAccount
from airflow_provider_sequences.testing.base import BEHAVIOURS
from airflow_provider_sequences.testing.crm import crm_frame
from airflow_provider_sequences.testing.whippy import WhippySimulator
from tests.whippy_nights import whippy_night

pytestmark = pytest.mark.usefixtures("whippy_connection")

ROWS = 20_000


@pytest.mark.parametrize("simulator_behaviour", BEHAVIOURS)
def test_a_read_back_holds_a_nights_pending_keys_as_hashes(
    whippy_simulator: WhippySimulator,
    whippy_account: WhippyAccount,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A first night of ten million contacts leaves every key pending until the read-back.
    Read from the state as one dict of Python strings with their identities, they took some
    190 bytes a key (1.9 GB); the read-back now reads them in slices and keeps their hashes.
    With the observed behaviour, step contacts show no external id: the phone and email
    indexes are built too."""
    monkeypatch.setattr(record, "PENDING_SLICE", 1_000)
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    run = whippy_night(crm_frame(ROWS, bad_share=0.0), whippy_account, engine, batch_size=4_000, timeout=60)
    whippy_simulator.wait_idle()
    assert run.pending_count == ROWS

    tracemalloc.start()
    try:
        run.confirm()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    result = run.finish()
    assert result.added_count == ROWS
    assert result.not_processed_count == 0
    # Beside one page of the step (500 contacts decoded, some 1.7 MB with the simulator's own
    # copy), 20,000 keys as a dict of strings with their identities took 3.8 MB (5.5 MB in
    # all); as hashes, about 50 bytes a key and a slice of 1,000 keys.
    assert peak < 4_000_000, peak


def test_keys_whippy_never_shows_are_named_not_enrolled_and_the_others_added(
    whippy_simulator: WhippySimulator,
    whippy_account: WhippyAccount,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keys still waiting are read again from the state by their hashes, in slices: each
    one missing is named, and only those."""
    monkeypatch.setattr(record, "PENDING_SLICE", 700)
    frame = crm_frame(3_000, bad_share=0.0)
    ignored = set(frame["crm_id"].iloc[[5, 1_234, 2_999]])
    engine = create_state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    run = whippy_night(frame, whippy_account, engine, batch_size=1_000, timeout=3)
    whippy_simulator.wait_idle()
    for contact in whippy_simulator.step_contacts(whippy_account.sequence_id):
        if contact["contact"].get("external_id") in ignored:
            # Out of the step, as a contact Whippy ignored never shows in it.
            whippy_simulator.set_step_contact_status(
                whippy_account.sequence_id, contact["contact"]["id"], "complete"
            )

    run.confirm()
    result = run.finish()

    assert set(result.not_processed) == ignored
    assert {v["reason"] for v in result.not_processed.values()} == {"notEnrolled"}
    assert sorted(result.added) == sorted(set(frame["crm_id"]) - ignored)


VALUE = {
    "phone": st.sampled_from([None, "+14155550001", "+14155550002", "+14155550003"]),
    "email": st.sampled_from([None, "a@example.com", "b@example.com", "c@example.com"]),
    "external_id": st.sampled_from([None, "k0", "k1", "k2", "x9"]),
}
PENDING = st.dictionaries(
    st.sampled_from([f"k{i}" for i in range(6)]),
    st.tuples(VALUE["phone"], VALUE["email"], VALUE["external_id"]),
    max_size=6,
)
STEP_CONTACT = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["active", "Pending", "finished", None]),
        "contact": st.fixed_dictionaries(
            {
                "external_id": VALUE["external_id"],
                "phone": VALUE["phone"],
                "email": VALUE["email"].map(lambda email: email.upper() if email else email),
            }
        ),
    }
)


def reference_read_back(
    pending: dict[str, tuple[str | None, str | None, str | None]], pages: list[list[dict[str, Any]]]
) -> tuple[set[str], list[list[int]]]:
    """Step contact by step contact, as the read-back's rules say: its external id takes the
    keys that have it; only when that takes none, its phone and its email take theirs."""
    found: set[str] = set()

    def take(position: int, value: str) -> int:
        keys = {key for key, identity in pending.items() if identity[position] == value} - found
        found.update(keys)
        return len(keys)

    unmatched: list[list[int]] = []
    for items in pages:
        unmatched.append([])
        for at, item in enumerate(items):
            if str(item["status"] or "").lower() not in ("active", "pending"):
                continue
            contact = item["contact"]
            taken = take(2, contact["external_id"]) if contact["external_id"] else 0
            if not taken:
                if contact["phone"]:
                    taken += take(0, contact["phone"])
                if contact["email"]:
                    taken += take(1, contact["email"].lower())
            if not taken:
                unmatched[-1].append(at)
    return found, unmatched


@settings(max_examples=300, deadline=None)
@given(pending=PENDING, pages=st.lists(st.lists(STEP_CONTACT, max_size=5), max_size=4))
def test_the_read_back_finds_what_a_step_contact_by_step_contact_reading_finds(
    pending: dict[str, tuple[str | None, str | None, str | None]], pages: list[list[dict[str, Any]]]
) -> None:
    stored = {key: _SEP.join(value or "" for value in identity) for key, identity in pending.items()}
    pending_set = PendingSet.of(stored, slice_size=2)
    waiting = Waiting(pending_set, lambda hashes: np.ones(len(hashes), dtype=bool))
    unmatched = [
        [at for item in waiting.see_page(items, tail=0) for at, same in enumerate(items) if same is item]
        for items in pages
    ]
    found, missing = waiting.outcome(pending_set)

    expected_found, expected_unmatched = reference_read_back(pending, pages)
    assert unmatched == expected_unmatched
    assert set(found) == expected_found
    assert len(found) == len(expected_found) == len(pending) - len(waiting)
    assert sorted(missing) == sorted(set(pending) - expected_found)
    assert waiting.waits_for_each(sorted(pending)) == [key not in expected_found for key in sorted(pending)]
