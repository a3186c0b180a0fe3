"""Chaos: every fault the simulators inject, at once, on syncs of 20,000 contacts.

10% server errors, 5% bursts of 429s, 2% connection resets, 2% lost responses (the write is
applied, then the connection drops) and random latency, over several seeds. Whatever happens,
no contact is enrolled twice, every key ends in exactly one outcome, every ``added`` key is
enrolled, and the faults cost at most twice the fault-free requests. Reply runs under both
behaviours of its simulator (documented, and as Reply's own CLI reports the real server), and
no bulk add ever names a contact already in the sequence. A run that still fails
after the hooks' retries is finished by a retry of the task (same run id), as Airflow would.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from airflow_provider_sequences.adapters.reply import ReplyAdapter
from airflow_provider_sequences.adapters.whippy import WhippyAdapter, whippy_rules
from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync.contract import ServiceAdapter
from airflow_provider_sequences.sync.engine import SyncOptions, SyncRun
from airflow_provider_sequences.sync.outcomes import NOT_ENROLLED, REQUEST_FAILED
from airflow_provider_sequences.sync.prepare import PrepareSpec
from airflow_provider_sequences.sync.source import records_chunks
from airflow_provider_sequences.sync.state import Scope, SyncState, create_state_engine
from airflow_provider_sequences.testing import (
    FaultPlan,
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
)
from airflow_provider_sequences.testing.base import Behaviour
from airflow_provider_sequences.testing.reply import ReplySimulator
from airflow_provider_sequences.testing.whippy import WhippySimulator

CONTACTS = 20_000
#: Outcomes a retry of the task tries again: the request failed, or its answer was lost and the
#: read-back did not find the contacts.
RETRIED = {REQUEST_FAILED, NOT_ENROLLED}
# Smaller than the services' maximum so that every kind of fault strikes some request.
REPLY_BATCH = 500
WHIPPY_BATCH = 1000
# Limits are not what this suite is about: the simulators do not enforce them and the hooks'
# own limiters are opened wide, so only the injected faults slow the runs down.
WIDE_OPEN = {
    "requests_per_minute": 1_000_000,
    "requests_per_hour": 10_000_000,
    "sequence_writes_per_minute": 1_000_000,
    "requests_per_second": 1_000_000,
}


def chaos(seed: int) -> FaultPlan:
    return FaultPlan(
        seed=seed,
        server_error_rate=0.10,
        rate_limit_rate=0.05,
        rate_limit_burst=3,
        rate_limit_wait=0.05,
        reset_rate=0.02,
        lost_response_rate=0.02,
        latency=(0.0, 0.02),
    )


def rows() -> list[dict[str, Any]]:
    return [
        {
            "id": f"crm-{i}",
            "email": f"person{i}@example.com",
            "first_name": f"Person{i}",
            "phone": f"+1415{200 + i // 10_000}{i % 10_000:04d}",
        }
        for i in range(CONTACTS)
    ]


def sync(adapter: ServiceAdapter, spec: PrepareSpec, state: SyncState, run_id: str, batch_size: int) -> Any:
    run = SyncRun(adapter, spec, state, run_id, SyncOptions(batch_size=batch_size, enrollment_timeout=30))
    run.run(records_chunks(rows(), chunk_size=5_000))
    run.confirm()
    return run.finish().to_xcom()


def check_accounting(result: dict[str, Any]) -> None:
    stats = result["stats"]
    assert stats["rows"] == CONTACTS
    assert stats["added"] + stats["not_processed"] + stats["duplicates"] + stats["unchanged"] == CONTACTS
    assert len(set(result["added"])) == len(result["added"])
    assert not set(result["added"]) & set(result["not_processed"])


def run_until_done(
    make_adapter: Any, spec: PrepareSpec, engine: sa.Engine, scope: Scope, batch_size: int, sim: Any
) -> tuple[dict[str, Any], int]:
    """One run under chaos; when keys still failed for the service's reasons, the task's retry
    (same run id, the service healthy again) finishes the job, as Airflow's retries would.
    Returns the final result and the requests spent."""
    state = SyncState(engine, scope)
    try:
        adapter = make_adapter()
        adapter.preflight()
        result = sync(adapter, spec, state, "chaos-night", batch_size)
        check_accounting(result)
        unfinished = any(o["reason"] in RETRIED for o in result["not_processed"].values())
    except SequencesApiError as exc:
        # The task fails with a clear error only when the retries were truly exhausted.
        failure: SequencesApiError | None = exc
        unfinished = True
    else:
        failure = None
    if failure is not None:
        assert failure.is_retryable, failure
        assert str(failure).startswith(f"{failure.service} API ")
    if unfinished:
        sim.faults.configure(FaultPlan())
        adapter = make_adapter()
        adapter.preflight()
        result = sync(adapter, spec, state, "chaos-night", batch_size)
        check_accounting(result)
    return result, len(sim.requests)


# Each seed under one behaviour: both behaviours and both seeds, in half the time of every pair.
@pytest.mark.parametrize(("seed", "behaviour"), [(11, "documented"), (12, "observed")])
def test_reply_under_chaos(
    seed: int, behaviour: Behaviour, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_map = {"email": "email", "first_name": "firstName"}

    def once(sim: ReplySimulator, plan: FaultPlan | None, name: str) -> tuple[dict[str, Any], int]:
        account = seed_reply_account(sim)
        monkeypatch.setenv(
            connection_env_var("reply_default"),
            connection_json("reply", sim.url, account.api_key, **WIDE_OPEN),
        )
        if plan:
            sim.faults.configure(plan)
            # Besides the random faults, the first write's answer is lost and the second's
            # connection is reset, so every kind strikes whatever the seed.
            sim.faults.force(None, "lost_response", "reset")

        def make() -> ReplyAdapter:
            return ReplyAdapter(ReplyHook(), account.sequence_id)

        rules = make().rules
        spec = PrepareSpec(column_map=spec_map, key_column="id", rules=rules)
        engine = create_state_engine(f"sqlite:///{tmp_path / name}.db")
        result, requests = run_until_done(
            make, spec, engine, Scope("reply", "reply_default", str(account.sequence_id)), REPLY_BATCH, sim
        )
        # Ground truth: nobody twice, every added key enrolled, nobody else, and no bulk add
        # named a member again (observed, that moves it on or is refused like a bad contact).
        enrolled = {sim.contact(cid)["email"]: n for (_, cid), n in sim.enrolments.items()}
        assert set(enrolled.values()) == {1}
        assert {f"person{key.split('-')[1]}@example.com" for key in result["added"]} == set(enrolled)
        assert sim.readds == {}
        return result, requests

    with ReplySimulator(enforce_rate_limits=False, behaviour=behaviour) as calm:
        clean, clean_requests = once(calm, None, "calm")
        clean_reads = member_reads(calm)
    with ReplySimulator(enforce_rate_limits=False, behaviour=behaviour) as stormy:
        result, requests = once(stormy, chaos(seed), "stormy")
        faults = {r.fault for r in stormy.requests}
        reads = member_reads(stormy)
    assert {"server_error", "rate_limit", "reset", "lost_response"} <= faults
    assert sorted(result["added"]) == sorted(clean["added"])
    assert result["stats"]["added"] == CONTACTS
    # A lost bulk-add answer costs a read of the sequence's contacts (every page, once at the
    # end of the run), never a write: the rest is bounded as before.
    assert requests - reads <= 2 * (clean_requests - clean_reads)
    page = 100 if behaviour == "observed" else 1000
    attempts = 2  # the run, and the task's retry when one is needed
    assert reads <= attempts * 2 * 2 * (CONTACTS // page + 1), f"{reads} pages of the sequence's contacts"


def member_reads(sim: ReplySimulator) -> int:
    """Requests for pages of a sequence's contacts."""
    return sum(1 for r in sim.requests if r.method == "GET" and r.path.endswith("/contacts"))


@pytest.mark.parametrize(("seed", "behaviour"), [(21, "documented"), (23, "observed")])
def test_whippy_under_chaos(
    seed: int, behaviour: Behaviour, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under both behaviours of the simulator: observed, step contacts carry no external id
    (the read-back matches phones) and pages hold at most 100."""

    def once(sim: WhippySimulator, plan: FaultPlan | None, name: str) -> tuple[dict[str, Any], int]:
        account = seed_whippy_account(sim)
        monkeypatch.setenv(
            connection_env_var("whippy_default"),
            connection_json("whippy", sim.url, account.api_key, **WIDE_OPEN),
        )
        if plan:
            sim.faults.configure(plan)
            # Besides the random faults, the first write's answer is lost and the second's
            # connection is reset, so every kind strikes whatever the seed (after the preflight
            # and the read of the sequence's members a first night makes).
            sim.faults.force(None, None, "lost_response", "reset")

        def make() -> WhippyAdapter:
            return WhippyAdapter(WhippyHook(), account.sequence_id, poll_interval=0.2)

        # The SMS sequence's rules, known without a request (preflight runs under chaos below).
        rules = whippy_rules(email_required=False)
        spec = PrepareSpec(column_map={"id": "external_id", "phone": "phone"}, key_column="id", rules=rules)
        engine = create_state_engine(f"sqlite:///{tmp_path / name}.db")
        result, requests = run_until_done(
            make, spec, engine, Scope("whippy", "whippy_default", account.sequence_id), WHIPPY_BATCH, sim
        )
        sim.wait_idle(timeout=30)
        # Ground truth: nobody twice (a blind re-send would reprocess them), every added key
        # is in the sequence, nobody else.
        counts = sim.enrolments
        assert set(counts.values()) == {1}
        in_sequence = {item["contact"]["external_id"] for item in sim.step_contacts(account.sequence_id)}
        assert set(result["added"]) == in_sequence
        return result, requests

    with WhippySimulator(enforce_rate_limits=False, behaviour=behaviour) as calm:
        clean, clean_requests = once(calm, None, "calm")
    with WhippySimulator(enforce_rate_limits=False, behaviour=behaviour) as stormy:
        result, requests = once(stormy, chaos(seed), "stormy")
        faults = {r.fault for r in stormy.requests}
    assert {"server_error", "rate_limit", "reset", "lost_response"} <= faults
    assert sorted(result["added"]) == sorted(clean["added"])
    assert result["stats"]["added"] == CONTACTS
    assert requests <= 2 * clean_requests, f"{requests} requests under chaos, {clean_requests} without faults"
