"""Whippy as its own code shows it (``shared/api/whippy.md``, 2026-12), where the sync depends
on it: page sizes, lists without a total, channels without an email, 422s that name no item."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_sequences.adapters.whippy import WhippyAdapter, WhippyEnrolment
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import records_chunks
from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine
from airflow_provider_sequences.testing import WhippyAccount
from airflow_provider_sequences.testing.base import BEHAVIOURS
from airflow_provider_sequences.testing.whippy import WhippySimulator

pytestmark = pytest.mark.usefixtures("whippy_connection")


def contact_reads(sim: WhippySimulator) -> list[tuple[str, int | None]]:
    """(page size asked, status) of every read of step contacts."""
    return [
        (r.path.split("?")[0], r.status)
        for r in sim.requests
        if r.method == "GET" and r.path.endswith("/contacts")
    ]


@pytest.mark.parametrize("simulator_behaviour", BEHAVIOURS)
def test_every_step_contact_is_read_whatever_page_size_whippy_takes(
    whippy_simulator: WhippySimulator, whippy_account: WhippyAccount
) -> None:
    hook = WhippyHook()
    hook.create_sequence_contacts(
        whippy_account.sequence_id, [{"phone": f"+1415555{i:04d}"} for i in range(250)]
    )
    whippy_simulator.wait_idle()

    phones = [item["contact"]["phone"] for item in hook.iter_sequence_contacts(whippy_account.sequence_id)]

    assert sorted(phones) == [f"+1415555{i:04d}" for i in range(250)]
    statuses = [status for _, status in contact_reads(whippy_simulator)]
    if whippy_simulator.observed:
        # Pages of 500 refused once, then pages of 100: 3 of them, the last short and the end
        # because the total says so.
        assert statuses == [422, 200, 200, 200]
        assert hook.page_size == 100
    else:
        assert statuses == [200]
        assert hook.page_size == 500
    assert hook.count_sequence_contacts(whippy_account.sequence_id) == 250


@pytest.mark.whippy_simulator(behaviour="observed")
def test_channels_without_a_total_are_read_to_the_first_empty_page(
    whippy_simulator: WhippySimulator, whippy_account: WhippyAccount
) -> None:
    for i in range(3):
        whippy_simulator.add_channel(phone=f"+1555555020{i}", name=f"Line {i}")
    hook = WhippyHook()
    page = hook.list_channels()
    assert "total" not in page
    assert all("email" not in channel for channel in page["data"])

    channels = list(hook.iter_channels())

    assert len(channels) == 4
    reads = [r for r in whippy_simulator.requests if r.path.startswith("/v1/channels")]
    assert len(reads) == 1 + 2  # the page above, then a page of 4 and the empty one that ends it


@pytest.mark.whippy_simulator(behaviour="observed")
def test_an_email_from_channel_is_not_checked_when_channels_show_no_email(
    whippy_simulator: WhippySimulator, whippy_account: WhippyAccount
) -> None:
    whippy_simulator.add_channel(email="sales@example.com", name="Sales mail", type="email")
    adapter = WhippyAdapter(
        WhippyHook(), whippy_account.sequence_id, enrolment=WhippyEnrolment(from_channel="sales@example.com")
    )
    adapter.preflight()  # steps without position or channel type, channels without email: no failure
    assert adapter.step_id == whippy_simulator.sequence(whippy_account.sequence_id)["steps"][0]["id"]
    assert adapter.step_channel == ""
    assert not adapter.rules.required - {"phone"}


def _run(
    adapter: WhippyAdapter, state: SyncState, rows: list[dict[str, Any]], run_id: str, split_writes: int
) -> dict[str, Any]:
    spec = PrepareSpec(
        column_map={"id": "external_id", "phone": "phone", "channel": "default_channel_id"},
        key_column="id",
        rules=adapter.rules,
    )
    run = SyncRun(adapter, spec, state, run_id, SyncOptions(batch_size=64, enrollment_timeout=5))
    run.pusher.max_blind_split_writes = split_writes
    run.run(records_chunks(rows, chunk_size=1000))
    run.confirm()
    result: dict[str, Any] = run.finish().to_xcom()
    return result


@pytest.mark.whippy_simulator(behaviour="observed", time_scale=60)
def test_a_422_that_names_no_contact_is_split_within_the_runs_budget(
    whippy_simulator: WhippySimulator, whippy_account: WhippyAccount, tmp_path: Any
) -> None:
    """Two bad contacts in a batch of 64, and 14 split writes a run: the first night isolates one
    (2 x 6 writes down a batch of 64), spends the rest, and leaves what it could not split
    requestFailed; the next night finishes. Nobody is enrolled twice, every row is accounted for.
    (The default budget is 30 writes: three minutes of Whippy's 10 writes a minute.)"""
    rows = [{"id": f"k{i}", "phone": f"+1415555{i:04d}", "channel": None} for i in range(64)]
    for bad in (5, 40):
        rows[bad]["channel"] = "not-a-uuid"
    state = SyncState(
        create_state_engine(f"sqlite:///{tmp_path / 'state.db'}"),
        Scope("whippy", "whippy_default", whippy_account.sequence_id),
    )

    def adapter() -> WhippyAdapter:
        made = WhippyAdapter(WhippyHook(), whippy_account.sequence_id, poll_interval=0.1)
        made.preflight()
        return made

    first = _run(adapter(), state, rows, "night-1", split_writes=14)
    posts = [r for r in whippy_simulator.requests if r.method == "POST"]
    stats = first["stats"]
    assert stats["added"] + stats["not_processed"] == 64
    reasons = {key: outcome["reason"] for key, outcome in first["not_processed"].items()}
    assert reasons["k5"] == "invalidInput"
    detail = "Whippy refused this contact (must be a UUID) when sent alone"
    assert first["not_processed"]["k5"]["detail"] == detail
    # What the budget left unsplit: the quarter with k40 (its other quarter was accepted).
    assert {key for key, reason in reasons.items() if reason == "requestFailed"} == {
        f"k{i}" for i in range(32, 48)
    }
    assert len(posts) == 1 + 14
    assert stats["split_batches"] == 7

    second = _run(adapter(), state, rows, "night-2", split_writes=14)
    second_reasons = {key: outcome["reason"] for key, outcome in second["not_processed"].items()}
    assert second_reasons == {"k5": "invalidInput", "k40": "invalidInput"}
    assert len(second["added"]) == 15  # the requestFailed keys but k40: 16 -> 8 -> 4 -> 2 -> 1
    whippy_simulator.wait_idle()
    assert sorted(whippy_simulator.enrolments.values()) == [1] * 62
