"""WhippyAddContactsToSequenceOperator end to end: real DAG runs (``dag.test()``, the metadata
database) against the Whippy simulator over real HTTP, each test with its own sync state.

What a run reports is checked against the simulator's ground truth: who is in the step, how
many times each contact was enrolled, who Whippy silently ignored, and every request sent.
Every test runs under both behaviours of the simulator: ``documented`` (Whippy's reference)
and ``observed`` (what Whippy's own code shows: step contacts without ``external_id``, 422s
that name no item, step-contact pages of at most 100, channels without ``email`` or
``total``, steps without position or channel type).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.sync.schema import META_TABLE, VERSION_TABLE
from airflow_provider_sequences.sync.state import ADDED, KeyOutcome, Scope, SyncState, create_state_engine
from airflow_provider_sequences.testing import WhippyAccount, connection_env_var, connection_json
from airflow_provider_sequences.testing.base import BEHAVIOURS
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_states, task_xcom
from airflow_provider_sequences.testing.whippy import WhippySimulator
from tests.dag_files import WHIPPY_OPERATOR, write_operator_dag

pytestmark = pytest.mark.parametrize("simulator_behaviour", BEHAVIOURS)

STATE_CONN_ID = "whippy_sync_state"
COLUMN_MAP = {"crm_id": "external_id", "phone": "phone", "email": "email", "full_name": "name"}
#: What a run's contacts are sent with unless a test says otherwise: small waits, its own state.
DEFAULTS: dict[str, Any] = {
    "column_map": COLUMN_MAP,
    "state_conn_id": STATE_CONN_ID,
    "poll_interval": 0.2,
    "enrollment_timeout": 3,
    # dag.test() has no executor to race (see test_a_trigger_fires_no_earlier_than_not_before).
    "min_deferral": 0,
}


def not_enrolled_causes(behaviour: str) -> str:
    # Observed: Whippy does not say a step's channel type, so the detail cannot either.
    channel = "a sms step" if behaviour == "documented" else "the step's channel"
    return (
        f"Whippy silently ignores contacts that lack what {channel} needs, contacts active in another "
        "step of the sequence, and, unless the sequence re-adds contacts, contacts that already went "
        "through it"
    )


# -- wiring ---------------------------------------------------------------------------------------


@dataclass
class Whippy:
    """One test's world: the DAGs folder, the simulator, its account and the sync state file."""

    folder: Path
    sim: WhippySimulator
    account: WhippyAccount
    state_path: Path
    name: str

    @property
    def sequence_id(self) -> str:
        return self.account.sequence_id

    @property
    def observed(self) -> bool:
        return self.sim.behaviour == "observed"

    def before_first_write(self) -> list[None]:
        """One ``None`` per request a first night sends before its first write, for
        ``sim.faults.force``: the sequence, its members (observed: pages of 500 refused, then
        read at 100), the step's count."""
        return [None] * (4 if self.observed else 3)

    def known_sequence(self, sequence_id: str | None = None) -> None:
        """Record a finished night that enrolled someone else in the sync state, as if the sync
        had run on this sequence before: a run then does not read the sequence's members first
        (only a first night does)."""
        engine = create_state_engine(f"sqlite:///{self.state_path}")
        try:
            scope = Scope("whippy", "whippy_default", sequence_id or self.sequence_id)
            state = SyncState(engine, scope)
            state.record([KeyOutcome("someone-earlier", ADDED)], "an-earlier-night")
            state.save_run("an-earlier-night", {}, finished=True)
        finally:
            engine.dispose()

    def steps(self, sequence_id: str | None = None) -> list[str]:
        return [step["id"] for step in self.sim.sequence(sequence_id or self.sequence_id)["steps"]]

    def run(
        self, suffix: str = "", *, upstream_rows: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Run:
        """Write a DAG with one operator task, run it with ``dag.test()`` and collect what it did."""
        dag_id = f"{self.name}{suffix}"
        options = {**DEFAULTS, "sequence_id": self.sequence_id, **kwargs}
        write_operator_dag(self.folder, dag_id, WHIPPY_OPERATOR, upstream_rows=upstream_rows, **options)
        before = len(self.sim.requests)
        dag_run = run_dag(load_dag(dag_id, self.folder))
        self.sim.wait_idle()
        return Run(
            state=task_states(dag_run)["enrol"],
            result=task_xcom(dag_run, "enrol"),
            requests=self.sim.requests[before:],
        )

    def state_rows(self) -> int:
        """Rows in the sync state tables (the file may not exist: then nothing was written), but
        for the schema's own version and facts."""
        if not self.state_path.exists():
            return 0
        with sqlite3.connect(self.state_path) as connection:
            tables = [
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
                if row[0] not in (VERSION_TABLE, META_TABLE)
            ]
            return sum(connection.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)  # noqa: S608


@dataclass
class Run:
    state: str
    result: Any
    requests: list[Any]

    @property
    def posts(self) -> list[Any]:
        return [r for r in self.requests if r.method == "POST"]


@pytest.fixture
def whippy(
    request: pytest.FixtureRequest,
    dags_folder: Path,
    whippy_connection: str,
    whippy_simulator: WhippySimulator,
    whippy_account: WhippyAccount,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Whippy:
    state_path = tmp_path / "sync_state.db"
    monkeypatch.setenv(
        connection_env_var(STATE_CONN_ID), json.dumps({"conn_type": "sqlite", "host": str(state_path)})
    )
    name = "whippy_" + re.sub(r"\W+", "_", request.node.name.removeprefix("test_")).strip("_")
    return Whippy(dags_folder, whippy_simulator, whippy_account, state_path, name)


# -- what the simulator says --------------------------------------------------------------------


def in_step(sim: WhippySimulator, sequence_id: str, step_id: str) -> dict[str, int]:
    """External id -> times enrolled, for every contact in the step now (the ground truth)."""
    enrolments = sim.enrolments
    found: dict[str, int] = {}
    for item in sim.step_contacts(sequence_id):
        if item["step_id"] == step_id and item["status"] in ("pending", "active"):
            contact = item["contact"]
            found[str(contact["external_id"])] = enrolments[(sequence_id, contact["id"])]
    return found


def enrolments_in(sim: WhippySimulator, sequence_id: str) -> int:
    """Every enrolment of every contact into any step of the sequence."""
    return sum(n for (sequence, _), n in sim.enrolments.items() if sequence == sequence_id)


def check_accounting(result: dict[str, Any], keys: Iterable[str]) -> None:
    """Every distinct key is in exactly one outcome; the counts add up to the rows read."""
    added, not_processed, stats = result["added"], result["not_processed"], result["stats"]
    assert all(isinstance(key, str) for key in [*added, *not_processed])
    assert len(added) == len(set(added))
    assert not set(added) & set(not_processed)
    assert stats["added"] == len(added)
    assert stats["not_processed"] == len(not_processed)
    assert stats["rows"] == stats["added"] + stats["not_processed"] + stats["duplicates"] + stats.get(
        "unchanged", 0
    )
    if stats.get("unchanged", 0) == 0:
        assert set(added) | set(not_processed) == set(keys)


def reasons(result: dict[str, Any]) -> dict[str, str]:
    return {key: outcome["reason"] for key, outcome in result["not_processed"].items()}


def rows(*specs: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [dict(zip(("crm_id", "phone", "email", "full_name"), spec, strict=True)) for spec in specs]


def good_rows(count: int, first: int = 1) -> list[dict[str, Any]]:
    return rows(
        *(
            (i, f"+1 415-555-{i:04d}", f"c{i}@example.com", f"Contact {i}")
            for i in range(first, first + count)
        )
    )


# -- a CRM export with every kind of row, read three ways -------------------------------------------

EXPORT = rows(
    (101, "+1 415-555-0101", "ada@example.com", "Ada Lovelace"),
    (102, "(415) 555-0102", None, "Grace Hopper"),
    (103, "415.555.0103", "  Alan.Turing@Example.COM ", "Alan Turing"),
    (None, "+1 415-555-0104", "nokey@example.com", "No Key"),
    (105, None, "nophone@example.com", "No Phone"),
    (106, "call me maybe", None, "Letters"),
    (107, "12", None, "Too Short"),
    (108, "+1 415-555-0108", "no-at-sign.example.com", "Bad Email"),
    (109, "+1 415-555-0109", None, "N" * 256),
    (101, "+1 415-555-0199", "second@example.com", "Duplicate of 101"),
    (110, "+44 20 7946 0018", "london@example.co.uk", "Londoner"),
)
EXPORT_ADDED = ["101", "102", "103", "110"]
EXPORT_NOT_PROCESSED = {
    "row:3": {"reason": "missingKey", "detail": "row 3 has no value in the key column 'crm_id'"},
    "105": {"reason": "missingPhone", "detail": "phone is empty (column 'phone')"},
    "106": {"reason": "invalidPhone", "detail": "'call me maybe' is not a phone number: it contains letters"},
    "107": {
        "reason": "invalidPhone",
        "detail": "'12' is not a valid US phone number; numbers from other countries need +<country code>",
    },
    "108": {
        "reason": "invalidEmail",
        "detail": "'no-at-sign.example.com' is not a valid email: An email address must have an @-sign.",
    },
    "109": {"reason": "fieldTooLong", "detail": "name is 256 characters; Whippy accepts at most 255"},
}


def _write_source(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    frame = pd.DataFrame(EXPORT)
    if kind == "sqlite":
        database = tmp_path / "crm.db"
        with sqlite3.connect(database) as connection:
            frame.to_sql("crm_contacts", connection, index=False)
        monkeypatch.setenv(
            connection_env_var("crm_export"), json.dumps({"conn_type": "sqlite", "host": str(database)})
        )
        return {"source_conn_id": "crm_export", "sql": "SELECT * FROM crm_contacts ORDER BY rowid"}
    if kind == "csv":
        path = tmp_path / "crm.csv"
        frame.astype({"crm_id": "Int64"}).to_csv(path, index=False)  # ids as the CRM writes them
        return {"source_path": str(path), "chunk_size": 4}
    return {"upstream_rows": EXPORT}


@pytest.mark.parametrize("source", ["sqlite", "csv", "upstream_task"])
def test_export_from_each_source_is_accounted_for_and_matches_the_ground_truth(
    whippy: Whippy, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = whippy.run(
        default_region="US", max_not_processed_share=None, **_write_source(source, tmp_path, monkeypatch)
    )

    assert run.state == "success"
    result = run.result
    check_accounting(result, [*EXPORT_ADDED, *EXPORT_NOT_PROCESSED])
    assert sorted(result["added"]) == EXPORT_ADDED
    assert result["not_processed"] == EXPORT_NOT_PROCESSED
    stats = result["stats"]
    assert (stats["rows"], stats["added"], stats["not_processed"], stats["duplicates"]) == (11, 4, 6, 1)
    assert (stats["write_requests"], stats["split_batches"]) == (1, 0)

    # Ground truth: exactly the added keys are in the first step, each enrolled once.
    first_step = whippy.steps()[0]
    assert in_step(whippy.sim, whippy.sequence_id, first_step) == dict.fromkeys(EXPORT_ADDED, 1)
    assert enrolments_in(whippy.sim, whippy.sequence_id) == 4
    assert whippy.sim.ignored == []
    # What was sent: E.164 phones, trimmed lowercase emails, the first row of a duplicated key.
    assert [(p.items, p.status) for p in run.posts] == [(4, 202)]
    ada = whippy.sim.contact_by(external_id="101")
    assert ada is not None
    assert (ada["phone"], ada["email"], ada["name"]) == ("+14155550101", "ada@example.com", "Ada Lovelace")
    alan = whippy.sim.contact_by(external_id="103")
    assert alan is not None
    assert (alan["phone"], alan["email"]) == ("+14155550103", "alan.turing@example.com")
    assert whippy.sim.contact_by(phone="+14155550199") is None


def test_every_data_reason_whippy_can_give(whippy: Whippy, capsys: pytest.CaptureFixture[str]) -> None:
    """Without default_region a national number is rejected; so are bad birth dates and the rest.

    Most rows fail, so the default partial-failure policy fails the task, result still in XCom.
    """
    export: list[dict[str, Any]] = [
        {"crm_id": "a1", "phone": "+1 415-555-0001", "birth_year": "1990"},
        {"crm_id": "a2", "phone": "(415) 555-0002", "birth_year": None},
        {"crm_id": "a3", "phone": "+1 415", "birth_year": None},
        {"crm_id": "a4", "phone": "call 415 555 0004", "birth_year": None},
        {"crm_id": "a5", "phone": "+1 415-555-0005", "birth_year": "nineteen ninety"},
        {"crm_id": "a6", "phone": "   ", "birth_year": None},
        {"crm_id": " ", "phone": "+1 415-555-0007", "birth_year": None},
    ]
    run = whippy.run(
        upstream_rows=export,
        column_map={"crm_id": "external_id", "phone": "phone", "birth_year": "birth_date.year"},
    )

    assert run.state == "failed"
    assert (
        "SyncFailedError: 6 of 7 contacts (86%) were not processed, more than max_not_processed_share=50%; "
        "the result with every reason is in XCom"
    ) in capsys.readouterr().out
    check_accounting(run.result, ["a1", "a2", "a3", "a4", "a5", "a6", "row:6"])
    assert run.result["added"] == ["a1"]
    assert run.result["not_processed"] == {
        "a2": {
            "reason": "invalidPhone",
            "detail": "'(415) 555-0002' has no country code; set default_region or use +<country code>",
        },
        "a3": {"reason": "invalidPhone", "detail": "'+1 415' is not a valid phone number"},
        "a4": {
            "reason": "invalidPhone",
            "detail": "'call 415 555 0004' is not a phone number: it contains letters",
        },
        "a5": {
            "reason": "invalidField",
            "detail": "birth_date.year must be a whole number; got 'nineteen ninety'",
        },
        "a6": {"reason": "missingPhone", "detail": "phone is empty (column 'phone')"},
        "row:6": {"reason": "missingKey", "detail": "row 6 has no value in the key column 'crm_id'"},
    }
    assert [p.items for p in run.posts] == [1]
    assert in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0]) == {"a1": 1}
    contact = whippy.sim.contact_by(external_id="a1")
    assert contact is not None
    assert contact["birth_date"] == {"year": 1990}


# -- Whippy's silent ignores ------------------------------------------------------------------------


def test_contacts_whippy_silently_ignores_are_not_enrolled(whippy: Whippy) -> None:
    """On a later night (the first reads the members before sending: see the first-night test)."""
    sim, sequence = whippy.sim, whippy.sequence_id
    first_step, second_step = whippy.steps()
    whippy.known_sequence()
    hook = WhippyHook()
    # Before the run: 201 is active in step 2; 202 went through the sequence (it does not re-add).
    hook.create_sequence_contacts(
        sequence, [{"phone": "+14155550201", "external_id": "201"}], step_id=second_step
    )
    hook.create_sequence_contacts(sequence, [{"phone": "+14155550202", "external_id": "202"}])
    sim.wait_idle()
    finished = sim.contact_by(external_id="202")
    assert finished is not None
    sim.set_step_contact_status(sequence, finished["id"], "complete")

    export = rows(
        ("201", "+1 415-555-0201", None, "Active elsewhere"),
        ("202", "+1 415-555-0202", None, "Finished"),
        ("203", "+1 415-555-0203", None, "New"),
    )
    run = whippy.run(upstream_rows=export, enrollment_timeout=1.5, max_not_processed_share=None)

    assert run.state == "success"
    check_accounting(run.result, ["201", "202", "203"])
    assert run.result["added"] == ["203"]
    detail = (
        f"Whippy accepted this contact but it was not in step {first_step} of sequence {sequence} after 2 s: "
        + not_enrolled_causes(sim.behaviour)
    )
    assert run.result["not_processed"] == {
        "201": {"reason": "notEnrolled", "detail": detail},
        "202": {"reason": "notEnrolled", "detail": detail},
    }
    # The simulator's own record of what it ignored, and why: the API never says.
    ignored = {(entry["phone"], entry["reason"]) for entry in sim.ignored}
    assert ignored == {
        ("+14155550201", "active or pending in another step of the sequence"),
        ("+14155550202", "already went through the sequence, which does not re-add contacts"),
    }
    assert in_step(sim, sequence, first_step) == {"203": 1}
    assert in_step(sim, sequence, second_step) == {"201": 1}
    assert enrolments_in(sim, sequence) == 3  # the two set-up enrolments and 203


def test_email_sequence_rejects_rows_without_email_before_sending(whippy: Whippy) -> None:
    sequence = whippy.account.email_sequence_id
    export = rows(
        ("301", "+1 415-555-0301", "Mail@Example.com", "Has email"),
        ("302", "+1 415-555-0302", None, "No email"),
        ("303", "+1 415-555-0303", "   ", "Blank email"),
        ("304", "+1 415-555-0304", "not an email", "Bad email"),
    )
    run = whippy.run(
        upstream_rows=export, sequence_id=sequence, max_not_processed_share=None, enrollment_timeout=1
    )

    assert run.state == "success"
    check_accounting(run.result, ["301", "302", "303", "304"])
    assert run.result["added"] == ["301"]
    invalid = {
        "reason": "invalidEmail",
        "detail": "'not an email' is not a valid email: An email address must have an @-sign.",
    }
    if whippy.observed:
        # Whippy does not say the step is an email step: rows without an email are sent, Whippy
        # ignores them, and the read-back says so. A bad email is still refused before sending.
        assert reasons(run.result) == {"302": "notEnrolled", "303": "notEnrolled", "304": "invalidEmail"}
        assert run.result["not_processed"]["304"] == invalid
        assert [p.items for p in run.posts] == [3]
        assert {entry["reason"] for entry in whippy.sim.ignored} == {"email step: the contact has no email"}
    else:
        assert run.result["not_processed"] == {
            "302": {"reason": "missingEmail", "detail": "email is empty (column 'email')"},
            "303": {"reason": "missingEmail", "detail": "email is empty (column 'email')"},
            "304": invalid,
        }
        assert [p.items for p in run.posts] == [1]  # the rejected rows never reached Whippy
        assert whippy.sim.ignored == []
    assert in_step(whippy.sim, sequence, whippy.steps(sequence)[0]) == {"301": 1}


# -- failures the service causes -----------------------------------------------------------------


def test_a_batch_that_keeps_failing_is_request_failed_and_the_rest_is_sent(
    whippy: Whippy, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = whippy.sim
    monkeypatch.setenv(
        connection_env_var("whippy_default"),
        connection_json("whippy", sim.url, whippy.account.api_key, max_attempts=2),
    )
    # Both attempts of the first batch's POST fail.
    sim.faults.force(*whippy.before_first_write(), "server_error", "server_error")
    run = whippy.run(upstream_rows=good_rows(4), batch_size=2)

    assert run.state == "success"  # 2 of 4 failed: not more than max_not_processed_share (50%)
    check_accounting(run.result, ["1", "2", "3", "4"])
    assert sorted(run.result["added"]) == ["3", "4"]
    detail = (
        "the request failed after retries: Whippy API POST "
        f"/v1/sequences/{whippy.sequence_id}/contacts failed: 500: Internal server error"
    )
    assert run.result["not_processed"] == {
        "1": {"reason": "requestFailed", "detail": detail},
        "2": {"reason": "requestFailed", "detail": detail},
    }
    assert [(p.status, p.fault) for p in run.posts] == [
        (500, "server_error"),
        (500, "server_error"),
        (202, None),
    ]
    assert in_step(sim, whippy.sequence_id, whippy.steps()[0]) == {"3": 1, "4": 1}

    # A later run retries what failed for the service's reasons, and only that.
    again = whippy.run("_again", upstream_rows=good_rows(4), batch_size=2)
    assert sorted(again.result["added"]) == ["1", "2"]
    assert again.result["stats"]["unchanged"] == 2
    assert [p.items for p in again.posts] == [2]
    assert in_step(sim, whippy.sequence_id, whippy.steps()[0]) == dict.fromkeys(["1", "2", "3", "4"], 1)


BAD_ROW = 5


@pytest.mark.parametrize("bad_input", ["default_channel_id", "custom_property"])
def test_a_batch_rejected_whole_is_bisected_down_to_its_bad_row(whippy: Whippy, bad_input: str) -> None:
    """8 rows, one of which Whippy's validation refuses but prepare cannot know about."""
    sim = whippy.sim
    export = good_rows(8)
    options: dict[str, Any] = {}
    if bad_input == "default_channel_id":
        for row in export:
            row["channel"] = None
        export[BAD_ROW]["channel"] = "sales-line"  # not a UUID
        column_map = {**COLUMN_MAP, "channel": "default_channel_id"}
        message = "must be a UUID"
    else:
        options["custom_object_id"] = sim.add_custom_object("crm_deal", ["plan"])
        for row in export:
            row["plan"], row["legacy_owner"] = "team", None
        export[BAD_ROW]["legacy_owner"] = "grace"  # not a property of the custom object
        column_map = {**COLUMN_MAP, "plan": "properties.plan", "legacy_owner": "properties.legacy_owner"}
        message = "is not a property of custom object 'crm_deal'"

    run = whippy.run(upstream_rows=export, column_map=column_map, **options)

    assert run.state == "success"
    keys = [str(row["crm_id"]) for row in export]
    check_accounting(run.result, keys)
    bad_key = keys[BAD_ROW]
    assert sorted(run.result["added"], key=int) == [k for k in keys if k != bad_key]
    # Observed: the 422 names no item, so the contact is known bad only once refused alone.
    detail = (
        f"Whippy refused this contact ({message}) when sent alone"
        if whippy.observed
        else f"Whippy rejected this contact: {message}"
    )
    assert run.result["not_processed"] == {bad_key: {"reason": "invalidInput", "detail": detail}}
    # Halving: 8 -> 4 + 4 -> the bad half as 2 + 2 -> the bad pair as 1 + 1: 2*log2(8) + 1 POSTs.
    assert [(p.items, p.status) for p in run.posts] == [
        (8, 422),
        (4, 202),
        (4, 422),
        (2, 422),
        (1, 202),
        (1, 422),
        (2, 202),
    ]
    assert len(run.posts) == 2 * int(math.log2(8)) + 1
    assert run.result["stats"]["split_batches"] == 3
    assert in_step(sim, whippy.sequence_id, whippy.steps()[0]) == dict.fromkeys(run.result["added"], 1)
    assert enrolments_in(sim, whippy.sequence_id) == 7


def test_an_error_about_the_request_stops_the_run_after_one_write(
    whippy: Whippy, capsys: pytest.CaptureFixture[str]
) -> None:
    export = good_rows(10)
    for row in export:
        row["plan"] = "team"
    run = whippy.run(
        upstream_rows=export,
        column_map={**COLUMN_MAP, "plan": "properties.plan"},
        custom_object_id="00000000-0000-4000-8000-000000000000",
        batch_size=2,
    )

    assert run.state == "failed"
    log = capsys.readouterr().out
    if whippy.observed:
        # The 422 names no field: it may be about a contact, so batches are split, but a batch
        # of which no piece is accepted counts as failed, and three in a row stop the run.
        assert run.result is not None
        check_accounting(run.result, [str(row["crm_id"]) for row in export])
        assert set(reasons(run.result).values()) == {"requestFailed"}
        assert run.result["not_processed"]["1"]["detail"] == (
            "Whippy refused this contact (custom object not found) when sent alone, and accepted no "
            "write of this run, so the request rather than the contact may be at fault; the next run "
            "tries again"
        )
        stopped = run.result["not_processed"]["10"]["detail"]
        assert stopped.startswith("not sent: the previous 3 batches failed")
        assert [(p.items, p.status) for p in run.posts] == [(2, 422), (1, 422), (1, 422)] * 3
    else:
        assert run.result is None
        assert (
            "SyncAbortedError: Whippy refused the request, so no batch can succeed: Whippy API POST "
            f"/v1/sequences/{whippy.sequence_id}/contacts failed: 422 "
            "[custom_data.custom_object_id: custom object not found]"
        ) in log
        # Not five batches, not bisected; a batch already queued behind it is not sent either.
        assert [(p.items, p.status) for p in run.posts] == [(2, 422)]
    assert whippy.sim.enrolments == {}


@pytest.mark.parametrize("problem", ["draft_sequence", "unknown_step", "unknown_from_channel"])
def test_settings_that_cannot_work_fail_in_preflight_without_a_write(
    whippy: Whippy, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sequence = whippy.sequence_id
    options: dict[str, Any] = {}
    if problem == "draft_sequence":
        sequence = whippy.sim.add_sequence("Spring launch", status="draft")
        expected = (
            f"SyncConfigurationError: Whippy sequence {sequence} ('Spring launch') is a draft and accepts "
            "no contacts: activate it in Whippy first"
        )
    elif problem == "unknown_step":
        options["step_id"] = "no-such-step"
        expected = (
            f"SyncConfigurationError: step_id no-such-step is not a step of Whippy sequence {sequence}; "
            f"its steps are {whippy.steps()}"
        )
    else:
        options["from_channel"] = "+15555550199"
        expected = (
            "SyncConfigurationError: from_channel '+15555550199' is not a channel of this Whippy "
            "organization; its channels are ['+15555550100']"
        )

    run = whippy.run(upstream_rows=good_rows(3), sequence_id=sequence, **options)

    assert run.state == "failed"
    assert expected in capsys.readouterr().out
    assert run.posts == []
    assert {r.method for r in run.requests} == {"GET"}
    assert whippy.sim.enrolments == {}


# -- waiting for Whippy's background work ---------------------------------------------------------


@pytest.mark.whippy_simulator(processing_delay=1.5)
def test_deferrable_run_waits_in_a_trigger_that_only_reads(
    whippy: Whippy, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = whippy.sim
    other = sim.add_sequence("Nightly onboarding (SMS, copy)", steps=["sms", "sms"])
    # One contact of each sequence is active in its step 2 already: Whippy will ignore it (on a
    # later night; the first reads the members and does not send it).
    for sequence_id in (whippy.sequence_id, other):
        whippy.known_sequence(sequence_id)
    hook = WhippyHook()
    for sequence_id in (whippy.sequence_id, other):
        hook.create_sequence_contacts(
            sequence_id, [{"phone": "+14155550009", "external_id": "9"}], step_id=whippy.steps(sequence_id)[1]
        )
    sim.wait_idle()
    export = good_rows(9)

    deferred = whippy.run("_deferred", upstream_rows=export, deferrable=True, enrollment_timeout=30)
    log = capsys.readouterr().out
    inline = whippy.run("_inline", upstream_rows=export, sequence_id=other, enrollment_timeout=4)

    assert (deferred.state, inline.state) == ("success", "success")
    assert "Deferring: waiting for Whippy to enrol 9 contacts" in log
    assert "Whippy's background work is settled" in log
    # After its single write the deferred task only read: the trigger's polls and the resume.
    assert [(p.items, p.status) for p in deferred.posts] == [(9, 202)]
    last_post = max(i for i, r in enumerate(deferred.requests) if r.method == "POST")
    after = deferred.requests[last_post + 1 :]
    assert len(after) >= 4
    assert {r.method for r in after} == {"GET"}

    keys = [str(i) for i in range(1, 10)]
    for run in (deferred, inline):
        check_accounting(run.result, keys)
        assert sorted(run.result["added"], key=int) == keys[:8]
        assert reasons(run.result) == {"9": "notEnrolled"}
    assert re.fullmatch(
        r"Whippy accepted this contact but it was not in step \S+ of sequence \S+ after \d+ s: .*",
        deferred.result["not_processed"]["9"]["detail"],
    )
    assert "after 0 s" not in deferred.result["not_processed"]["9"]["detail"]
    assert deferred.result["stats"]["rows"] == inline.result["stats"]["rows"] == 9
    assert deferred.result["stats"]["write_requests"] == inline.result["stats"]["write_requests"] == 1
    for sequence_id in (whippy.sequence_id, other):
        assert in_step(sim, sequence_id, whippy.steps(sequence_id)[0]) == dict.fromkeys(keys[:8], 1)


def test_a_trigger_fires_no_earlier_than_not_before(whippy: Whippy) -> None:
    """Whippy done at once must not resume the task at once: Airflow 3.2 and 3.3 fail a
    resumed task whose worker's exit the scheduler hears late (apache/airflow#71580)."""
    import asyncio
    import time

    from airflow_provider_sequences.triggers.whippy import WhippyEnrollmentTrigger

    WhippyHook().create_sequence_contacts(whippy.sequence_id, [{"phone": "+14155550001"}])
    whippy.sim.wait_idle()

    async def first_event(not_before: float | None) -> tuple[dict[str, Any], float]:
        trigger = WhippyEnrollmentTrigger(
            whippy_conn_id="whippy_default",
            sequence_id=whippy.sequence_id,
            step_id=whippy.steps()[0],
            expected_total=1,
            poll_interval=0.1,
            not_before=not_before,
        )
        started = time.monotonic()
        event = await anext(trigger.run())
        return event.payload, time.monotonic() - started

    done_at_once, quick = asyncio.run(first_event(None))
    guarded, slow = asyncio.run(first_event(time.time() + 1.5))
    assert done_at_once["status"] == guarded["status"] == "complete"
    assert quick < 1.0
    assert slow >= 1.4
    assert guarded["waited"] >= 1.4
    # The guard survives the triggerer's restart: it is in what the trigger serializes.
    assert (
        WhippyEnrollmentTrigger(
            whippy_conn_id="w", sequence_id="s", step_id="t", expected_total=1, not_before=5.0
        ).serialize()[1]["not_before"]
        == 5.0
    )


@pytest.mark.whippy_simulator(processing_delay=2.0)
def test_deferrable_run_does_not_give_up_before_whippy_starts_working(whippy: Whippy) -> None:
    """The step's count stands still until Whippy's job runs: that is not the end of the work."""
    run = whippy.run(upstream_rows=good_rows(5), deferrable=True, enrollment_timeout=30)

    assert run.state == "success"
    check_accounting(run.result, ["1", "2", "3", "4", "5"])
    assert sorted(run.result["added"]) == ["1", "2", "3", "4", "5"]
    assert [p.items for p in run.posts] == [5]
    assert in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0]) == dict.fromkeys(
        ["1", "2", "3", "4", "5"], 1
    )


@pytest.mark.whippy_simulator(processing_delay=0.5)
def test_a_deferred_night_reads_back_only_the_contacts_it_sent(whippy: Whippy) -> None:
    """The step grows every night: the resumed task reads it from where this night's contacts
    start, not from the beginning (pages of 500: a full read of night two would take 3)."""
    first = whippy.run("_1", upstream_rows=good_rows(1200), deferrable=True, enrollment_timeout=30)
    assert first.state == "success"
    assert len(first.result["added"]) == 1200

    export = [*good_rows(1202), *rows((1300, "+1 415-555-0009", None, "Sharing a phone with 9"))]
    second = whippy.run("_2", upstream_rows=export, deferrable=True, enrollment_timeout=30)

    assert second.state == "success"
    assert sorted(second.result["added"]) == ["1201", "1202"]
    assert reasons(second.result) == {"1300": "sharedContact"}
    assert second.result["stats"]["unchanged"] == 1200
    # The step's count before sending, then one page from where the count stood.
    assert second.result["stats"]["read_requests"] == 2
    assert [p.items for p in second.posts] == [2]


@pytest.mark.whippy_simulator(processing_delay=0.5)
def test_a_deferred_night_with_contacts_an_earlier_night_left_unconfirmed_reads_the_whole_step(
    whippy: Whippy,
) -> None:
    first = whippy.run("_1", upstream_rows=good_rows(3), wait_for_enrollment=False)
    assert first.result["added"] == []

    second = whippy.run("_2", upstream_rows=good_rows(5), deferrable=True, enrollment_timeout=30)

    assert second.state == "success"
    check_accounting(second.result, ["1", "2", "3", "4", "5"])
    assert sorted(second.result["added"]) == ["1", "2", "3", "4", "5"]
    assert [p.items for p in second.posts] == [2]
    # Keys 1-3 may be anywhere in the step: one read of all of it (one page), not the tail
    # first and then the whole step again.
    assert second.result["stats"]["read_requests"] == 2


@pytest.mark.whippy_simulator(processing_delay=1.0)
def test_inline_wait_reads_back_every_poll_interval_until_the_timeout(whippy: Whippy) -> None:
    """Whippy's job runs 1 s after the 202: the wait must not stop early, nor read only every 2 s."""
    run = whippy.run(upstream_rows=good_rows(3), poll_interval=0.2, enrollment_timeout=2)

    assert run.state == "success"
    assert sorted(run.result["added"]) == ["1", "2", "3"]
    last_post = max(i for i, r in enumerate(run.requests) if r.method == "POST")
    reads = [r for r in run.requests[last_post + 1 :] if r.method == "GET"]
    assert 3 <= len(reads) <= 6  # after 0, 0.2, 0.6 and 1.4 s (the interval doubles)
    # And before sending: the members (a first night) and the step's count.
    assert run.result["stats"]["read_requests"] == len(reads) + 2 + whippy.observed


@pytest.mark.whippy_simulator(processing_delay=0.5)
def test_without_waiting_the_next_run_confirms_without_resending(whippy: Whippy) -> None:
    sim = whippy.sim
    export = good_rows(5)
    keys = ["1", "2", "3", "4", "5"]
    unconfirmed = {
        "reason": "enrollmentUnconfirmed",
        "detail": "Whippy accepted this contact but its enrolment was not read back in this run; "
        "the next run confirms it",
    }

    first = whippy.run("_1", upstream_rows=export, wait_for_enrollment=False)
    assert first.state == "success"  # nothing failed: the contacts are on their way
    check_accounting(first.result, keys)
    assert first.result["added"] == []
    assert first.result["not_processed"] == dict.fromkeys(keys, unconfirmed)
    assert [p.items for p in first.posts] == [5]

    # Another night without waiting: still unconfirmed, still accounted for, nothing sent.
    second = whippy.run("_2", upstream_rows=export, wait_for_enrollment=False)
    assert second.state == "success"
    check_accounting(second.result, keys)
    assert second.result["not_processed"] == dict.fromkeys(keys, unconfirmed)
    assert second.posts == []

    third = whippy.run("_3", upstream_rows=export)
    assert third.state == "success"
    check_accounting(third.result, keys)
    assert sorted(third.result["added"]) == keys
    assert third.posts == []
    assert in_step(sim, whippy.sequence_id, whippy.steps()[0]) == dict.fromkeys(keys, 1)

    fourth = whippy.run("_4", upstream_rows=export)
    assert fourth.result["added"] == []
    assert fourth.result["stats"]["unchanged"] == 5
    assert fourth.posts == []


def test_pending_contacts_stored_by_an_earlier_version_are_still_confirmed(whippy: Whippy) -> None:
    """Earlier versions stored each pending contact's identity as a {phone, email, external_id}
    dict: after an upgrade, the next run still reads those contacts back by the same rules."""
    export = good_rows(3)
    first = whippy.run("_1", upstream_rows=export, wait_for_enrollment=False)
    assert first.result["added"] == []
    old = {
        # Matched by its external id alone.
        "1": {"external_id": "1", "phone": "+14155550001", "email": "c1@example.com"},
        # No external id: matched by its phone.
        "2": {"phone": "+14155550002", "email": "c2@example.com"},
        # No external id, a phone no contact has: matched by its email, in any case.
        "3": {"phone": "+14155559999", "email": "C3@Example.com"},
    }
    with sqlite3.connect(whippy.state_path) as connection:
        connection.executemany(
            "UPDATE sequence_sync_state SET identity = ? WHERE contact_key = ?",
            [(json.dumps(identity), key) for key, identity in old.items()],
        )

    second = whippy.run("_2", upstream_rows=export)
    assert second.state == "success"
    assert sorted(second.result["added"]) == ["1", "2", "3"]
    assert second.posts == []


def test_a_lost_response_is_not_retried_blindly_and_the_read_back_finds_the_contacts(whippy: Whippy) -> None:
    # The POST is applied and its answer lost.
    whippy.sim.faults.force(*whippy.before_first_write(), "lost_response")
    run = whippy.run(upstream_rows=good_rows(6))

    assert run.state == "success"
    check_accounting(run.result, [str(i) for i in range(1, 7)])
    assert sorted(run.result["added"]) == [str(i) for i in range(1, 7)]
    assert [(p.items, p.fault) for p in run.posts] == [(6, "lost_response")]
    assert in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0]) == {str(i): 1 for i in range(1, 7)}
    assert enrolments_in(whippy.sim, whippy.sequence_id) == 6


def test_a_lost_response_for_contacts_whippy_ignored_says_so(whippy: Whippy) -> None:
    """The read-back cannot find them: the detail says the answer was lost, not that they were refused."""
    whippy.known_sequence()  # not the first night: contact 1 is not known to be in step 2
    hook = WhippyHook()
    hook.create_sequence_contacts(
        whippy.sequence_id, [{"phone": "+14155550001", "external_id": "1"}], step_id=whippy.steps()[1]
    )
    whippy.sim.wait_idle()
    whippy.sim.faults.force(None, None, "lost_response")
    run = whippy.run(upstream_rows=good_rows(2), enrollment_timeout=1)

    assert run.result["added"] == ["2"]
    assert run.result["not_processed"] == {
        "1": {
            "reason": "notEnrolled",
            "detail": "the answer to the request that sent this contact was lost, and it is not in "
            f"step {whippy.steps()[0]} of sequence {whippy.sequence_id}",
        }
    }
    assert len(run.posts) == 1


def test_a_write_whose_connection_was_reset_is_sent_again_once_in_the_same_run(whippy: Whippy) -> None:
    """Whippy never saw the reset write: once its work is over and a read of the whole step
    proves the contacts absent, the run sends them again itself; no task retry is needed."""
    # The first batch's connection is reset before Whippy sees it.
    whippy.sim.faults.force(*whippy.before_first_write(), "reset")
    run = whippy.run(upstream_rows=good_rows(6), batch_size=3)

    assert run.state == "success"
    keys = [str(i) for i in range(1, 7)]
    check_accounting(run.result, keys)
    assert sorted(run.result["added"]) == keys
    assert [(p.items, p.status, p.fault) for p in run.posts] == [
        (None, None, "reset"),
        (3, 202, None),
        (3, 202, None),  # contacts 1 to 3 again, once
    ]
    assert run.result["stats"]["write_requests"] == 3
    # Preflight, the members, the step's count, then polls: each reads only past what was read before.
    assert run.result["stats"]["read_requests"] <= 7 + whippy.observed
    assert in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0]) == dict.fromkeys(keys, 1)
    assert enrolments_in(whippy.sim, whippy.sequence_id) == 6


@pytest.mark.whippy_simulator(processing_delay=1.0)
def test_a_lost_answer_is_not_sent_again_while_whippy_may_still_apply_it(whippy: Whippy) -> None:
    """The second write's 202 is lost after a retry made it a second later than the first: when
    the first batch shows up, the second's job is still queued. Sending it then would enrol its
    contacts twice; the run waits (twice as long as Whippy took for the first) and finds them."""
    whippy.sim.faults.force(*whippy.before_first_write(), None, "server_error", "lost_response")
    run = whippy.run(upstream_rows=good_rows(6), batch_size=3, poll_interval=0.1, enrollment_timeout=10)

    assert run.state == "success"
    keys = [str(i) for i in range(1, 7)]
    assert sorted(run.result["added"]) == keys
    assert [(p.status, p.fault) for p in run.posts] == [
        (202, None),
        (500, "server_error"),
        (202, "lost_response"),
    ]
    assert in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0]) == dict.fromkeys(keys, 1)
    assert Counter(whippy.sim.enrolments.values()) == Counter({1: 6})


def test_absence_is_proven_by_a_full_read_not_by_the_tail(whippy: Whippy) -> None:
    """Polls read only the step contacts past the step's count before the run; a contact
    already in the step before (reprocessed, no new step contact) is only found by the full
    read the run makes before it declares anyone notEnrolled, and one Whippy silently ignored
    still ends notEnrolled."""
    sim, sequence = whippy.sim, whippy.sequence_id
    first_step, second_step = whippy.steps()
    whippy.known_sequence()  # a later night: the first reads the members before sending
    hook = WhippyHook()
    hook.create_sequence_contacts(
        sequence, [{"phone": "+14155550001", "external_id": "1"}], step_id=second_step
    )
    hook.create_sequence_contacts(sequence, [{"phone": "+14155550002", "external_id": "2"}])
    sim.wait_idle()

    run = whippy.run(upstream_rows=good_rows(3), enrollment_timeout=1, max_not_processed_share=None)

    assert run.state == "success"
    check_accounting(run.result, ["1", "2", "3"])
    assert sorted(run.result["added"]) == ["2", "3"]
    assert reasons(run.result) == {"1": "notEnrolled"}
    assert run.result["not_processed"]["1"]["detail"].startswith(
        f"Whippy accepted this contact but it was not in step {first_step} of sequence {sequence}"
    )
    assert [p.items for p in run.posts] == [3]
    assert in_step(sim, sequence, first_step) == {"2": 2, "3": 1}  # 2 was reprocessed, as sent


# -- dry run, request counts, incremental runs ---------------------------------------------------


def test_dry_run_sends_nothing_and_a_real_run_uses_the_fewest_requests(
    whippy: Whippy, tmp_path: Path
) -> None:
    total = 9_000
    path = tmp_path / "big_export.csv"
    export = pd.DataFrame(
        {
            "crm_id": [f"crm-{i}" for i in range(total)],
            "phone": [f"+1 415-{200 + i // 10_000}-{i % 10_000:04d}" for i in range(total)],
        }
    )
    bad = pd.DataFrame({"crm_id": ["crm-bad"], "phone": ["+1 415 CALL-NOW"]})
    pd.concat([export, bad], ignore_index=True).to_csv(path, index=False)
    column_map = {"crm_id": "external_id", "phone": "phone"}
    rejected = {
        "crm-bad": {
            "reason": "invalidPhone",
            "detail": "'+1 415 CALL-NOW' is not a phone number: it contains letters",
        }
    }

    dry = whippy.run("_dry", source_path=str(path), column_map=column_map, dry_run=True)
    assert dry.state == "success"
    assert dry.posts == []
    assert {r.method for r in dry.requests} == {"GET"}
    assert whippy.state_rows() == 0
    # What would be sent, and what would be rejected and why.
    assert dry.result["stats"]["would_send"] == total
    assert dry.result["stats"]["rows"] == total + 1
    assert dry.result["would_send"] == export["crm_id"].tolist()
    assert dry.result["added"] == []
    assert dry.result["not_processed"] == rejected
    assert whippy.sim.contacts == []

    real = whippy.run("_real", source_path=str(path), column_map=column_map, enrollment_timeout=10)
    assert real.state == "success"
    check_accounting(real.result, [*export["crm_id"], "crm-bad"])
    assert len(real.result["added"]) == total
    assert real.result["not_processed"] == rejected
    assert [(p.items, p.status) for p in real.posts] == [(4000, 202), (4000, 202), (1000, 202)]
    assert len(real.posts) == math.ceil(total / 4000)
    assert real.result["stats"]["write_requests"] == 3
    truth = in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0])
    assert len(truth) == total
    assert set(truth.values()) == {1}


def test_second_run_of_the_same_export_sends_nothing(whippy: Whippy) -> None:
    export = [*good_rows(6), *rows((7, "not a phone", None, "Bad"))]
    keys = [str(i) for i in range(1, 8)]

    first = whippy.run("_1", upstream_rows=export)
    assert sorted(first.result["added"]) == keys[:6]
    assert reasons(first.result) == {"7": "invalidPhone"}

    second = whippy.run("_2", upstream_rows=export)
    assert second.state == "success"
    check_accounting(second.result, keys)
    assert second.result["added"] == []
    assert second.result["stats"]["unchanged"] == 6
    assert second.result["not_processed"] == {
        "7": {
            "reason": "invalidPhone",
            "detail": "'not a phone' is not a phone number: it contains letters (unchanged since then)",
        }
    }
    assert second.posts == []
    assert second.result["stats"]["write_requests"] == 0
    # A re-sent contact would be reprocessed by Whippy (enrolled again): every count is still 1.
    assert in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0]) == dict.fromkeys(keys[:6], 1)
    assert Counter(whippy.sim.enrolments.values()) == Counter({1: 6})


def test_rows_sharing_a_phone_or_email_are_refused_before_whippy_merges_them(whippy: Whippy) -> None:
    # Whippy matches an incoming contact by phone, email or external id: these rows would be
    # merged into the contact of an earlier row, and that person enrolled (messaged) again.
    export = rows(
        (1, "+1 415-555-0001", "ada@example.com", "Ada"),
        (2, "+1 415-555-0002", "grace@example.com", "Grace"),
        (3, "+1 (415) 555 0001", "ada.second@example.com", "Ada again, another CRM record"),
        (4, "+1 415-555-0004", "GRACE@example.com", "Grace, mistyped key"),
        (5, "+1 415-555-0005", "alan@example.com", "Alan"),
    )
    # Two rows a chunk: the earlier row is in an earlier chunk for 3, in the same one for 4.
    first = whippy.run("_1", upstream_rows=export, chunk_size=2)

    assert first.state == "success"
    check_accounting(first.result, ["1", "2", "3", "4", "5"])
    assert sorted(first.result["added"]) == ["1", "2", "5"]
    merged = (
        ", which comes first: Whippy matches contacts by phone, email or external id, so it would merge "
        "the two into one contact and may message that person twice; give each row its own value, "
        "or drop the duplicate row"
    )
    assert first.result["not_processed"] == {
        "3": {"reason": "sharedContact", "detail": "its phone +14155550001 is also on source row 0" + merged},
        "4": {
            "reason": "sharedContact",
            "detail": "its email grace@example.com is also on source row 1" + merged,
        },
    }
    assert [p.items for p in first.posts] == [3]  # the refused rows never reached Whippy
    assert in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0]) == {"1": 1, "2": 1, "5": 1}
    assert Counter(whippy.sim.enrolments.values()) == Counter({1: 3})

    # The next night, unchanged: nothing is sent, and the refusals are reported again.
    second = whippy.run("_2", upstream_rows=export, chunk_size=2)
    assert second.posts == []
    assert reasons(second.result) == {"3": "sharedContact", "4": "sharedContact"}


def test_a_new_row_with_a_phone_an_earlier_night_sent_is_refused(whippy: Whippy) -> None:
    night_1 = rows((1, "+1 415-555-0001", "ada@example.com", "Ada"))
    assert whippy.run("_1", upstream_rows=night_1).result["added"] == ["1"]

    # Row 1 is unchanged, so this night does not even read its phone: the state remembers it.
    night_2 = [
        *night_1,
        *rows(
            (2, "+1 415-555-0001", "ada.work@example.com", "Ada, new CRM record"),
            (3, "+1 415-555-0003", "Ada@Example.com", "Ada, third record"),
            (4, "+1 415-555-0004", "alan@example.com", "Alan"),
        ),
    ]
    second = whippy.run("_2", upstream_rows=night_2)
    check_accounting(second.result, ["1", "2", "3", "4"])
    assert second.result["added"] == ["4"]
    details = {
        key: outcome["detail"].split(":")[0] for key, outcome in second.result["not_processed"].items()
    }
    assert details == {
        "2": "its phone +14155550001 was sent to Whippy earlier, with key '1'",
        "3": "its email ada@example.com was sent to Whippy earlier, with key '1'",
    }
    assert [p.items for p in second.posts] == [1]
    assert Counter(whippy.sim.enrolments.values()) == Counter({1: 2})


# -- what Whippy's own code shows (issue 12) ------------------------------------------------------


def test_a_nightly_sync_is_read_back_by_phone_and_email_not_external_id(whippy: Whippy) -> None:
    """Issue 12's finding: 2,415 rows against step contacts that carry no external_id (observed)
    were all reported notEnrolled, and the next night would have sent them all again."""
    export = [
        *good_rows(2410),
        *rows(*((f"bad-{i}", f"call {i}", None, f"Bad {i}") for i in range(5))),
    ]
    keys = [str(row["crm_id"]) for row in export]

    night_1 = whippy.run("_1", upstream_rows=export, enrollment_timeout=10)

    assert night_1.state == "success"
    check_accounting(night_1.result, keys)
    assert len(night_1.result["added"]) == 2410
    assert set(reasons(night_1.result).values()) == {"invalidPhone"}
    assert [p.items for p in night_1.posts] == [2410]
    truth = in_step(whippy.sim, whippy.sequence_id, whippy.steps()[0])
    assert truth == dict.fromkeys(night_1.result["added"], 1)

    night_2 = whippy.run("_2", upstream_rows=export)
    assert night_2.state == "success"
    check_accounting(night_2.result, keys)
    assert night_2.result["stats"]["unchanged"] == 2410
    assert night_2.posts == []
    assert Counter(whippy.sim.enrolments.values()) == Counter({1: 2410})


def test_the_first_night_on_a_sequence_with_members_sends_none_of_them(whippy: Whippy) -> None:
    """A sync state that knows nothing of the sequence (a first night, or a deleted state):
    its members are read first and not sent again (Whippy would message them again)."""
    sim, sequence = whippy.sim, whippy.sequence_id
    first_step, second_step = whippy.steps()
    hook = WhippyHook()
    # Before the sync ever ran: 1 is in step 1 (the target), 2 in step 2, 3 went through step 1,
    # and 4 is in step 1 under another phone but the email row 4 has (Whippy matches by email).
    hook.create_sequence_contacts(sequence, [{"phone": "+14155550001", "external_id": "1"}])
    hook.create_sequence_contacts(sequence, [{"phone": "+14155550002"}], step_id=second_step)
    hook.create_sequence_contacts(sequence, [{"phone": "+14155550003"}])
    hook.create_sequence_contacts(sequence, [{"phone": "+14155550099", "email": "C4@example.com"}])
    sim.wait_idle()
    finished = sim.contact_by(phone="+14155550003")
    assert finished is not None
    sim.set_step_contact_status(sequence, finished["id"], "complete")
    before = sim.enrolments
    export = good_rows(6)
    keys = [str(i) for i in range(1, 7)]

    first = whippy.run("_1", upstream_rows=export)

    assert first.state == "success"
    check_accounting(first.result, keys)
    assert sorted(first.result["added"]) == ["1", "4", "5", "6"]
    assert reasons(first.result) == {"2": "contactAlreadyInSequence", "3": "contactAlreadyInSequence"}
    assert first.result["not_processed"]["2"]["detail"] == (
        f"already active in step {second_step} of Whippy sequence {sequence} before this sync first "
        "ran: not sent (Whippy ignores a contact active in another step)"
    )
    assert first.result["not_processed"]["3"]["detail"] == (
        f"went through Whippy sequence {sequence} before this sync first ran (step {first_step}, "
        "complete): not sent, so that nobody gets the sequence twice"
    )
    assert [p.items for p in first.posts] == [2]  # 5 and 6 only
    members_after = sim.enrolments
    assert {pair: members_after[pair] for pair in before} == before  # no member enrolled again
    assert Counter(members_after.values()) == Counter({1: 6})

    # The state deleted: the next night knows nothing again, reads the members, sends nobody.
    whippy.state_path.unlink()
    again = whippy.run("_2", upstream_rows=export)
    assert again.state == "success"
    check_accounting(again.result, keys)
    assert sorted(again.result["added"]) == ["1", "4", "5", "6"]
    assert set(reasons(again.result)) == {"2", "3"}
    assert again.posts == []
    assert sim.enrolments == members_after

    # A later night with the state: nothing read first, nothing sent.
    later = whippy.run("_3", upstream_rows=export)
    assert later.posts == []
    assert later.result["stats"]["unchanged"] == 4
    assert later.result["stats"]["read_requests"] == 1  # the step's count, no members
    assert sim.enrolments == members_after


@pytest.mark.whippy_simulator(processing_delay=2.0)
def test_a_trigger_that_fires_early_does_not_make_enrolled_contacts_not_enrolled(
    whippy: Whippy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mapped shards of one sequence share its step: a sibling's contacts bring the step's count
    to what this task waits for before its own are in, and the trigger fires. The resumed task
    must keep reading for the rest of ``enrollment_timeout``: contacts it called notEnrolled
    would be sent again the next night, and messaged twice."""
    from airflow.triggers.base import TriggerEvent

    from airflow_provider_sequences.triggers.whippy import WhippyEnrollmentTrigger

    async def fires_at_once(self: WhippyEnrollmentTrigger) -> Any:
        yield TriggerEvent(
            {"status": "complete", "total": self.expected_total, "waited": 0.0, "tail_from": self.tail_from}
        )

    monkeypatch.setattr(WhippyEnrollmentTrigger, "run", fires_at_once)
    run = whippy.run(upstream_rows=good_rows(5), deferrable=True, enrollment_timeout=30)

    assert run.state == "success"
    assert sorted(run.result["added"]) == ["1", "2", "3", "4", "5"]
    assert [p.items for p in run.posts] == [5]
