"""ReplyAddContactsToSequenceOperator end to end: real DAG runs (``dag.test()``, the metadata
database) against the Reply simulator over real HTTP.

Every test writes its DAG file into its own DAGs folder, points the operator at its own sync
state (a SQLite file in ``tmp_path``) and checks the result against the simulator's ground
truth: who was enrolled, and which requests were sent.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator
from airflow_provider_sequences.testing import (
    FaultPlan,
    ReplyAccount,
    ReplySimulator,
    RequestRecord,
    connection_env_var,
    connection_json,
)
from airflow_provider_sequences.testing.base import BEHAVIOURS
from airflow_provider_sequences.testing.crm import crm_frame, write_crm_sqlite
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_states, task_xcom
from tests.dag_files import REPLY_OPERATOR, write_operator_dag

# Every test runs against both behaviours of the simulator: as Reply's reference documents it,
# and as Reply's own CLI reports the real server answers.
pytestmark = [
    pytest.mark.usefixtures("reply_connection"),
    pytest.mark.parametrize("simulator_behaviour", BEHAVIOURS),
]

TASK = "enrol"
IMPORT = "/v3/contacts/import"
STATE_CONN = "sync_state"
CRM_CONN = "crm_export"
EXAMPLE_DAGS = Path(__file__).resolve().parents[1] / "dags_examples"


# -- the harness --------------------------------------------------------------------------------


@dataclass
class Run:
    """One DAG run: the DagRun, the operator's XCom result and every task's final state."""

    dag_run: Any
    result: dict[str, Any]
    states: dict[str, str]


@dataclass
class ReplyWorld:
    """The simulator, its account, this test's DAGs folder and sync state."""

    sim: ReplySimulator
    account: ReplyAccount
    folder: Path
    dag_id: str
    state_db: Path

    @property
    def bulk_path(self) -> str:
        return f"/v3/sequences/{self.account.sequence_id}/contact-links/bulk"

    def dag(self, suffix: str = "", **kwargs: Any) -> Any:
        """Write a DAG with one Reply task (defaults: the account's sequence, this test's state)."""
        kwargs.setdefault("sequence_id", self.account.sequence_id)
        kwargs.setdefault("state_conn_id", STATE_CONN)
        if "firstName" not in kwargs.get("column_map", {}).values() and "contact_id_column" not in kwargs:
            # Reply imports need a first name; these tests' rows are about other things.
            kwargs.setdefault("first_name_fallback", "there")
        dag_id = self.dag_id + suffix
        write_operator_dag(self.folder, dag_id, REPLY_OPERATOR, task_id=TASK, **kwargs)
        return load_dag(dag_id, self.folder)

    def run(self, dag: Any, **conf: Any) -> Run:
        dag_run = run_dag(dag, run_conf=conf or None)
        return Run(dag_run, task_xcom(dag_run, TASK), task_states(dag_run))

    def writes(self, since: int = 0) -> list[RequestRecord]:
        """Write requests the simulator saw, from request number ``since`` on."""
        return [r for r in self.sim.requests[since:] if r.method != "GET"]

    def enrolled_emails(self, sequence_id: int | None = None) -> Counter[str]:
        """Ground truth: email of each enrolled contact -> times it was added."""
        sequence = sequence_id or self.account.sequence_id
        return Counter(
            {
                self.sim.contact(contact_id)["email"]: times
                for (seq, contact_id), times in self.sim.enrolments.items()
                if seq == sequence
            }
        )

    def enrolled_ids(self) -> Counter[int]:
        return Counter(
            {c: n for (seq, c), n in self.sim.enrolments.items() if seq == self.account.sequence_id}
        )

    def state_rows(self) -> list[tuple[Any, ...]]:
        """Every row of the sync state (none when it was never created)."""
        if not self.state_db.exists():
            return []
        with sqlite3.connect(self.state_db) as connection:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if ("sequence_sync_state",) not in tables:
                return []
            return connection.execute("SELECT * FROM sequence_sync_state ORDER BY contact_key").fetchall()


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    reply_simulator: ReplySimulator,
    reply_account: ReplyAccount,
    dags_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> ReplyWorld:
    state_db = tmp_path / "sync_state.db"
    monkeypatch.setenv(
        connection_env_var(STATE_CONN), json.dumps({"conn_type": "sqlite", "host": str(state_db)})
    )
    dag_id = "reply_" + re.sub(r"\W+", "_", request.node.name).strip("_")[:150]
    return ReplyWorld(reply_simulator, reply_account, dags_folder, dag_id, state_db)


def check_accounting(result: dict[str, Any], keys: set[str] | None = None) -> None:
    """rows = added + not processed + duplicates + unchanged; each key in exactly one outcome."""
    added, not_processed, stats = result["added"], result["not_processed"], result["stats"]
    assert all(isinstance(key, str) for key in [*added, *not_processed])
    assert len(set(added)) == len(added)
    assert not set(added) & set(not_processed)
    assert stats["added"] == len(added)
    assert stats["not_processed"] == len(not_processed)
    assert stats["rows"] == len(added) + len(not_processed) + stats["duplicates"] + stats.get("unchanged", 0)
    if keys is not None:
        assert set(added) | set(not_processed) == keys


def check_enrolled(world: ReplyWorld, result: dict[str, Any], email_of: dict[str, str]) -> None:
    """The simulator enrolled exactly the added keys' contacts, each once, and no bulk add
    named a contact already in the sequence."""
    assert world.enrolled_emails() == Counter({email_of[key]: 1 for key in result["added"]})
    assert world.sim.readds == {}


# -- sources ------------------------------------------------------------------------------------

#: One export, read from every kind of source. Keys are CRM ids (integers where the source
#: has types): results name them as strings.
SOURCE_ROWS: list[dict[str, Any]] = [
    {"crm_id": 101, "email": "ada@example.com", "first_name": "Ada", "phone": "+1 415-200-0101"},
    {"crm_id": 102, "email": "  Grace@Example.COM ", "first_name": "Grace", "phone": "(415) 200-0102"},
    {"crm_id": 103, "email": "not-an-email", "first_name": "Typo", "phone": None},
    {"crm_id": None, "email": "nokey@example.com", "first_name": "Nokey", "phone": None},
    {"crm_id": 104, "email": None, "first_name": "Noemail", "phone": None},
    {"crm_id": 101, "email": "ada.again@example.com", "first_name": "Ada", "phone": None},
    {"crm_id": 105, "email": "alan@example.com", "first_name": "Alan", "phone": "call me maybe"},
    {"crm_id": 106, "email": "edsger@example.com", "first_name": "Edsger", "phone": None},
]
SOURCE_COLUMNS = {"email": "email", "first_name": "firstName", "phone": "phone"}
SOURCE_EMAILS = {"101": "ada@example.com", "102": "grace@example.com", "106": "edsger@example.com"}
SOURCE_NOT_PROCESSED = {
    "103": "invalidEmail",
    "row:3": "missingKey",
    "104": "missingEmail",
    "105": "invalidPhone",
}


def source_frame() -> pd.DataFrame:
    frame = pd.DataFrame(SOURCE_ROWS)
    frame["crm_id"] = frame["crm_id"].astype("Int64")
    return frame


def source_kwargs(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Operator arguments reading SOURCE_ROWS from a source of this kind."""
    if kind == "sqlite":
        database = write_crm_sqlite(tmp_path / "crm.db", source_frame(), table="crm_contacts")
        monkeypatch.setenv(
            connection_env_var(CRM_CONN), json.dumps({"conn_type": "sqlite", "host": str(database)})
        )
        sql = "SELECT crm_id, email, first_name, phone FROM crm_contacts ORDER BY rowid"
        return {"sql": sql, "source_conn_id": CRM_CONN}
    if kind == "csv":
        path = tmp_path / "contacts.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(SOURCE_ROWS[0]))
            writer.writeheader()
            writer.writerows(SOURCE_ROWS)
        return {"source_path": str(path)}
    if kind == "parquet":
        path = tmp_path / "contacts.parquet"
        source_frame().to_parquet(path, index=False)
        return {"source_path": str(path)}
    assert kind == "upstream"
    return {"upstream_rows": SOURCE_ROWS}


@pytest.mark.parametrize("kind", ["sqlite", "csv", "parquet", "upstream"])
def test_reads_every_kind_of_source(world: ReplyWorld, kind, tmp_path, monkeypatch) -> None:
    dag = world.dag(
        key_column="crm_id",
        column_map=SOURCE_COLUMNS,
        default_region="US",
        max_not_processed_share=None,
        # Three chunks: a duplicate and a row number that span chunks.
        chunk_size=3,
        **source_kwargs(kind, tmp_path, monkeypatch),
    )
    run = world.run(dag)

    assert run.states[TASK] == "success"
    result = run.result
    assert sorted(result["added"]) == ["101", "102", "106"]
    assert {key: o["reason"] for key, o in result["not_processed"].items()} == SOURCE_NOT_PROCESSED
    assert result["stats"]["rows"] == 8
    assert result["stats"]["duplicates"] == 1
    check_accounting(result, {"101", "102", "103", "104", "105", "106", "row:3"})
    # The first row of a duplicated key wins: Ada's first email, not the second.
    check_enrolled(world, result, SOURCE_EMAILS)
    assert world.sim.contact_by_email("ada.again@example.com") is None
    grace = world.sim.contact_by_email("grace@example.com")
    assert grace is not None
    assert (grace["firstName"], grace["phone"]) == ("Grace", "+14152000102")
    # One import and one bulk add for the three good rows.
    assert [(r.path, r.items) for r in world.writes()] == [(IMPORT, 3), (world.bulk_path, 3)]
    assert result["stats"]["write_requests"] == 2


def test_a_second_run_sends_nothing_and_reports_enrolled_keys_as_unchanged(
    world: ReplyWorld, tmp_path, monkeypatch
) -> None:
    dag = world.dag(
        key_column="crm_id",
        column_map=SOURCE_COLUMNS,
        default_region="US",
        max_not_processed_share=None,
        **source_kwargs("sqlite", tmp_path, monkeypatch),
    )
    first = world.run(dag)
    assert sorted(first.result["added"]) == ["101", "102", "106"]
    seen = len(world.sim.requests)

    second = world.run(dag)

    assert second.dag_run.run_id != first.dag_run.run_id
    assert second.states[TASK] == "success"
    assert world.writes(seen) == []
    assert second.result["stats"]["write_requests"] == 0
    assert second.result["added"] == []
    assert second.result["stats"]["unchanged"] == 3
    # Rows rejected for their data are reported again, without sending, until the data changes.
    assert {k: o["reason"] for k, o in second.result["not_processed"].items()} == SOURCE_NOT_PROCESSED
    assert second.result["not_processed"]["103"]["detail"].endswith("(unchanged since then)")
    check_accounting(second.result, set(SOURCE_NOT_PROCESSED))
    check_enrolled(world, first.result, SOURCE_EMAILS)


# -- reasons ------------------------------------------------------------------------------------


def test_rows_rejected_before_sending_and_by_the_import(world: ReplyWorld) -> None:
    colleague = world.sim.add_user("colleague@example.com")
    world.sim.add_contact("taken@example.com", owner_user_id=colleague)
    rows = [
        {"crm_id": "crm-1", "email": "ok@example.com", "first_name": "Ok"},
        {"crm_id": None, "email": "nokey@example.com", "first_name": "Nokey"},
        {"crm_id": "crm-3", "email": "  ", "first_name": "Blank"},
        {"crm_id": "crm-4", "email": "ada@@example.com", "first_name": "Typo"},
        {"crm_id": "crm-5", "email": "phone@example.com", "first_name": "Phone", "phone": "12"},
        {"crm_id": "crm-6", "email": "long@example.com", "first_name": "N" * 300},
        {"crm_id": "crm-7", "email": "taken@example.com", "first_name": "Taken"},
    ]
    dag = world.dag(
        upstream_rows=rows,
        key_column="crm_id",
        column_map={"email": "email", "first_name": "firstName", "phone": "phone"},
        default_region="US",
        max_not_processed_share=None,
    )
    run = world.run(dag)

    # Six of seven not processed, and the task still succeeds: None never fails a run.
    assert run.states[TASK] == "success"
    result = run.result
    assert result["added"] == ["crm-1"]
    not_processed = result["not_processed"]
    assert not_processed["row:1"] == {
        "reason": "missingKey",
        "detail": "row 1 has no value in the key column 'crm_id'",
    }
    assert not_processed["crm-3"] == {"reason": "missingEmail", "detail": "email is empty (column 'email')"}
    assert not_processed["crm-4"]["reason"] == "invalidEmail"
    assert not_processed["crm-4"]["detail"].startswith("'ada@@example.com' is not a valid email: ")
    assert not_processed["crm-5"] == {
        "reason": "invalidPhone",
        "detail": "'12' is not a valid US phone number; numbers from other countries need +<country code>",
    }
    assert not_processed["crm-6"] == {
        "reason": "fieldTooLong",
        "detail": "firstName is 300 characters; Reply accepts at most 255",
    }
    if world.sim.observed:
        # Reply skips the email a teammate's contact holds and names that contact: never added.
        assert not_processed["crm-7"] == {
            "reason": "contactSkipped",
            "detail": "Reply's import skipped this contact (contactOwnedByTeammate)",
        }
        assert world.sim.foreign_adds == {}
    else:
        assert not_processed["crm-7"] == {
            "reason": "invalidInput",
            "detail": "Reply could not import this contact: "
            "a contact with this email belongs to another user",
        }
    check_accounting(result, {"crm-1", "row:1", "crm-3", "crm-4", "crm-5", "crm-6", "crm-7"})
    check_enrolled(world, result, {"crm-1": "ok@example.com"})
    # Rows rejected by prepare never reach the API: the import carries the two others only.
    assert [(r.path, r.items) for r in world.writes()] == [(IMPORT, 2), (world.bulk_path, 1)]


@pytest.mark.reply_simulator(contact_limit=3)
def test_rows_with_contact_ids_and_the_services_own_reasons(world: ReplyWorld) -> None:
    sim, owner, sequence = world.sim, world.account.user_id, world.account.sequence_id
    ok1 = sim.add_contact("ok1@example.com", owner_user_id=owner)
    ok2 = sim.add_contact("ok2@example.com", owner_user_id=owner)
    flagged = sim.add_contact("flagged@example.com", owner_user_id=owner, invalid=True)
    already = sim.add_contact("already@example.com", owner_user_id=owner)
    over = sim.add_contact("over@example.com", owner_user_id=owner)
    colleague = sim.add_user("colleague@example.com")
    theirs = sim.add_contact("theirs@example.com", owner_user_id=colleague)
    # Someone enrolled this contact by hand before the run.
    assert ReplyHook().add_contacts_to_sequence(sequence, [already])["added"] == [already]
    if sim.observed:
        # Observed, the plan limit refuses the whole request (see the test of its own below).
        sim.data.contact_limit = None
    seen = len(sim.requests)
    rows: list[dict[str, Any]] = [
        {"crm_id": "crm-ok1", "reply_id": ok1},
        {"crm_id": "crm-empty", "reply_id": None},
        {"crm_id": "crm-abc", "reply_id": "abc"},
        {"crm_id": "crm-ghost", "reply_id": 999999},
        {"crm_id": "crm-theirs", "reply_id": theirs},
        {"crm_id": "crm-flagged", "reply_id": str(flagged)},
        {"crm_id": "crm-already", "reply_id": already},
        {"crm_id": "crm-ok2", "reply_id": ok2},
        {"crm_id": "crm-over", "reply_id": over},
    ]
    dag = world.dag(
        upstream_rows=rows,
        contact_id_column="reply_id",
        key_column="crm_id",
        column_map={},
        max_not_processed_share=None,
    )
    run = world.run(dag)

    assert run.states[TASK] == "success"
    result = run.result
    already_detail = (
        f"contact {already} is already in Reply sequence {sequence} (read from the sequence before "
        "sending); not sent again"
    )
    if sim.observed:
        # Every refusal is the same invalidInput; the member was read first and never sent.
        assert sorted(result["added"]) == ["crm-ok1", "crm-ok2", "crm-over"]
        refused = {"reason": "invalidInput", "detail": "Contact could not be added to sequence"}
        assert result["not_processed"] == {
            "crm-empty": {"reason": "invalidContactId", "detail": "the id column 'reply_id' is empty"},
            "crm-abc": {
                "reason": "invalidContactId",
                "detail": "contact id 'abc' in column 'reply_id' is not a positive integer",
            },
            "crm-ghost": refused,
            "crm-theirs": refused,
            "crm-flagged": refused,
            "crm-already": {"reason": "contactAlreadyInSequence", "detail": already_detail},
        }
        assert world.enrolled_ids() == Counter({already: 1, ok1: 1, ok2: 1, over: 1})
        assert [(r.path, r.items) for r in world.writes(seen)] == [(world.bulk_path, 6)]
        assert sim.readds == {}
        return
    assert sorted(result["added"]) == ["crm-ok1", "crm-ok2"]
    user = owner
    assert result["not_processed"] == {
        "crm-empty": {"reason": "invalidContactId", "detail": "the id column 'reply_id' is empty"},
        "crm-abc": {
            "reason": "invalidContactId",
            "detail": "contact id 'abc' in column 'reply_id' is not a positive integer",
        },
        "crm-ghost": {"reason": "contactNotFound", "detail": "contact 999999 does not exist"},
        "crm-theirs": {
            "reason": "forbidden",
            "detail": f"user {user} may not act for the owner of contact {theirs}",
        },
        "crm-flagged": {"reason": "invalidInput", "detail": f"contact {flagged} is marked invalid"},
        "crm-already": {"reason": "contactAlreadyInSequence", "detail": already_detail},
        "crm-over": {
            "reason": "contactLimitExceeded",
            "detail": "the plan allows 3 contacts in sequences",
        },
    }
    check_accounting(result, {row["crm_id"] for row in rows})
    # The hand enrolment stays the only one of "already"; the run added exactly its two.
    assert world.enrolled_ids() == Counter({already: 1, ok1: 1, ok2: 1})
    # Rows with ids go straight to one bulk add: no import, and not the member.
    assert [(r.path, r.items) for r in world.writes(seen)] == [(world.bulk_path, 6)]
    assert sim.readds == {}
    assert result["stats"]["write_requests"] == 1


def test_a_batch_that_fails_after_retries_is_request_failed_and_retried_next_run(
    world: ReplyWorld, monkeypatch
) -> None:
    monkeypatch.setenv(
        connection_env_var("reply_default"),
        connection_json("reply", world.sim.url, world.account.api_key, max_attempts=2),
    )
    ids = [world.sim.add_contact(f"c{i}@example.com", owner_user_id=world.account.user_id) for i in range(4)]
    rows = [{"reply_id": contact_id} for contact_id in ids]
    dag = world.dag(
        upstream_rows=rows,
        contact_id_column="reply_id",
        column_map={},
        batch_size=2,
        max_not_processed_share=None,
    )
    # whoami (the account), the preflight read and the read of the sequence's contacts (the
    # state is new) pass; both attempts of the first bulk add meet a 500.
    world.sim.faults.force(None, None, None, "server_error", "server_error")
    run = world.run(dag)

    assert run.states[TASK] == "success"
    result = run.result
    keys = [str(i) for i in ids]
    assert sorted(result["added"]) == keys[2:]
    detail = (
        f"the request failed after retries: Reply.io API POST {world.bulk_path} failed: "
        "500 server.error: an unexpected error occurred"
    )
    assert result["not_processed"] == {key: {"reason": "requestFailed", "detail": detail} for key in keys[:2]}
    check_accounting(result, set(keys))
    assert world.enrolled_ids() == Counter({ids[2]: 1, ids[3]: 1})
    writes = world.writes()
    assert [(r.items, r.status, r.fault) for r in writes] == [
        (None, 500, "server_error"),
        (None, 500, "server_error"),
        (2, 200, None),
    ]
    assert result["stats"]["write_requests"] == 3

    # A failed request may succeed later: the next run sends that batch only.
    seen = len(world.sim.requests)
    again = world.run(dag)
    assert sorted(again.result["added"]) == keys[:2]
    assert again.result["not_processed"] == {}
    assert again.result["stats"]["unchanged"] == 2
    check_accounting(again.result, set(keys[:2]))
    assert [(r.path, r.items) for r in world.writes(seen)] == [(world.bulk_path, 2)]
    assert world.enrolled_ids() == Counter(dict.fromkeys(ids, 1))


def test_two_keys_of_one_contact_share_its_outcome(world: ReplyWorld) -> None:
    rows = [
        {"crm_id": "crm-1", "email": "same@example.com"},
        {"crm_id": "crm-2", "email": " SAME@example.com"},
        {"crm_id": "crm-3", "email": "other@example.com"},
    ]
    dag = world.dag(upstream_rows=rows, key_column="crm_id", column_map={"email": "email"})
    run = world.run(dag)

    assert run.states[TASK] == "success"
    assert sorted(run.result["added"]) == ["crm-1", "crm-2", "crm-3"]
    assert run.result["not_processed"] == {}
    check_accounting(run.result, {"crm-1", "crm-2", "crm-3"})
    assert world.enrolled_emails() == Counter({"same@example.com": 1, "other@example.com": 1})
    assert [(r.path, r.items) for r in world.writes()] == [(IMPORT, 3), (world.bulk_path, 2)]

    seen = len(world.sim.requests)
    again = world.run(dag)
    assert again.result["stats"]["unchanged"] == 3
    check_accounting(again.result, set())
    assert world.writes(seen) == []


# -- bisection, lost answers, request counts -----------------------------------------------------


def test_a_batch_the_import_rejects_whole_is_split_until_the_bad_row_stands_alone(
    world: ReplyWorld, monkeypatch
) -> None:
    from airflow_provider_sequences.testing.reply_requests import email_error as simulator_check

    # email-validator (which prepare uses) accepts this address; the simulator's check refuses
    # it, so one 400 sinks the whole import of any batch that carries it.
    refused = "mallory@example.com"

    def email_error(email: Any) -> str | None:
        return "this mailbox is on the blocklist" if email == refused else simulator_check(email)

    monkeypatch.setattr("airflow_provider_sequences.testing.reply_app.email_error", email_error)
    emails = [f"person{i}@example.com" for i in range(8)]
    emails[5] = refused
    dag = world.dag(upstream_rows=[{"email": e} for e in emails], column_map={"email": "email"})
    run = world.run(dag)

    assert run.states[TASK] == "success"
    result = run.result
    assert sorted(result["added"]) == sorted(set(emails) - {refused})
    assert result["not_processed"] == {
        refused: {
            "reason": "invalidInput",
            "detail": "Reply.io rejected this contact: this mailbox is on the blocklist",
        }
    }
    check_accounting(result, set(emails))
    check_enrolled(world, result, {e: e for e in emails})
    # 8 -> 4 + 4 -> (4 ok) 2 + 2 -> 1 + 1: the rejected import at each of the log2(8) + 1 sizes,
    # the good half at each of the 3 levels, and a bulk add after each good import.
    bulk = world.bulk_path
    assert [(r.path, r.items, r.status) for r in world.writes()] == [
        (IMPORT, 8, 400),
        (IMPORT, 4, 200),
        (bulk, 4, 200),
        (IMPORT, 4, 400),
        (IMPORT, 2, 400),
        (IMPORT, 1, 200),
        (bulk, 1, 200),
        (IMPORT, 1, 400),
        (IMPORT, 2, 200),
        (bulk, 2, 200),
    ]
    assert result["stats"]["write_requests"] == 10
    assert result["stats"]["split_batches"] == 3


def test_a_lost_answer_to_the_bulk_add_still_ends_added_once(world: ReplyWorld) -> None:
    emails = ["ada@example.com", "grace@example.com", "alan@example.com"]
    dag = world.dag(upstream_rows=[{"email": e} for e in emails], column_map={"email": "email"})
    # Requests: whoami (the account), the preflight read, the import, the read of the sequence's
    # contacts (the state is new), then the bulk add, whose answer is lost.
    world.sim.faults.force(None, None, None, None, "lost_response")
    run = world.run(dag)

    assert run.states[TASK] == "success"
    result = run.result
    assert sorted(result["added"]) == sorted(emails)
    assert result["not_processed"] == {}
    check_accounting(result, set(emails))
    check_enrolled(world, result, {e: e for e in emails})
    # The bulk add is not sent again: reading the sequence shows its contacts in it.
    assert [(r.path, r.fault) for r in world.writes()] == [(IMPORT, None), (world.bulk_path, "lost_response")]
    assert result["stats"]["write_requests"] == 2
    contacts_path = f"/v3/sequences/{world.account.sequence_id}/contacts"
    assert [r.path for r in world.sim.requests].count(contacts_path) == 2  # before, and after the loss


def test_new_contacts_with_emails_cost_two_writes_per_batch(world: ReplyWorld, tmp_path, monkeypatch) -> None:
    export = crm_frame(2_500, bad_share=0.0)
    database = write_crm_sqlite(tmp_path / "crm.db", export)
    monkeypatch.setenv(
        connection_env_var(CRM_CONN), json.dumps({"conn_type": "sqlite", "host": str(database)})
    )
    dag = world.dag(
        sql="SELECT crm_id, email, first_name, last_name, company, job_title, phone, city, country, tier "
        "FROM crm_contacts",
        source_conn_id=CRM_CONN,
        key_column="crm_id",
        column_map={
            "email": "email",
            "first_name": "firstName",
            "last_name": "lastName",
            "company": "company",
            "job_title": "title",
            "phone": "phone",
            "city": "city",
            "country": "country",
            "tier": "customFields.Tier",
        },
        default_region="US",
        batch_size=1000,
    )
    run = world.run(dag)

    assert run.states[TASK] == "success"
    result = run.result
    assert result["stats"]["rows"] == 2_500
    assert len(result["added"]) == 2_500
    assert result["not_processed"] == {}
    check_accounting(result, set(export["crm_id"]))
    check_enrolled(world, result, dict(zip(export["crm_id"], export["email"], strict=True)))
    bulk = world.bulk_path
    assert [(r.method, r.path, r.items) for r in world.writes()] == [
        ("POST", IMPORT, 1000),
        ("POST", bulk, 1000),
        ("POST", IMPORT, 1000),
        ("POST", bulk, 1000),
        ("POST", IMPORT, 500),
        ("POST", bulk, 500),
    ]
    assert result["stats"]["write_requests"] == 6
    contact = world.sim.contact_by_email(export["email"].iloc[0])
    assert contact is not None
    assert contact["firstName"] == export["first_name"].iloc[0]
    assert contact["customFields"] == [{"name": "Tier", "value": export["tier"].iloc[0]}]


def test_new_contacts_with_ids_cost_one_write_per_batch(world: ReplyWorld, tmp_path) -> None:
    owner = world.account.user_id
    ids = [world.sim.add_contact(f"person{i}@example.com", owner_user_id=owner) for i in range(2_500)]
    path = tmp_path / "contacts.parquet"
    pd.DataFrame({"reply_id": ids}).to_parquet(path, index=False)
    dag = world.dag(source_path=str(path), contact_id_column="reply_id", column_map={})
    run = world.run(dag)

    assert run.states[TASK] == "success"
    result = run.result
    assert sorted(result["added"], key=int) == [str(i) for i in ids]
    check_accounting(result, {str(i) for i in ids})
    assert world.enrolled_ids() == Counter(dict.fromkeys(ids, 1))
    assert [(r.method, r.path, r.items) for r in world.writes()] == [
        ("POST", world.bulk_path, 1000),
        ("POST", world.bulk_path, 1000),
        ("POST", world.bulk_path, 500),
    ]
    assert result["stats"]["write_requests"] == 3


# -- dry run and the partial-failure policy ------------------------------------------------------


def test_a_dry_run_sends_no_write_and_writes_no_state(world: ReplyWorld) -> None:
    columns = {"email": "email"}
    rows = [
        {"email": e} for e in ("ada@example.com", "grace@example.com", "not-an-email", "alan@example.com")
    ]
    dry_dag = world.dag("_dry", upstream_rows=rows, column_map=columns, dry_run=True)

    fresh = world.run(dry_dag)

    assert fresh.states[TASK] == "success"
    assert fresh.result["would_send"] == ["ada@example.com", "grace@example.com", "alan@example.com"]
    assert fresh.result["added"] == []
    assert {r.method for r in world.sim.requests} == {"GET"}
    assert world.state_rows() == []
    assert world.sim.enrolments == {}

    first = world.run(world.dag(upstream_rows=[{"email": "ada@example.com"}], column_map=columns))
    assert first.result["added"] == ["ada@example.com"]
    state_before = world.state_rows()
    seen = len(world.sim.requests)

    # With a state, a dry run plans as a real run would: what an earlier run enrolled is skipped.
    dry = world.run(dry_dag)

    assert dry.states[TASK] == "success"
    result = dry.result
    assert result["would_send"] == ["grace@example.com", "alan@example.com"]
    assert result["added"] == []
    assert list(result["not_processed"]) == ["not-an-email"]
    assert result["not_processed"]["not-an-email"]["reason"] == "invalidEmail"
    stats = result["stats"]
    assert stats["would_send"] == 2
    assert stats["unchanged"] == 1
    assert stats["write_requests"] == 0
    assert stats["rows"] == stats["would_send"] + stats["not_processed"] + stats["duplicates"] + 1
    assert {r.method for r in world.sim.requests[seen:]} == {"GET"}
    assert world.state_rows() == state_before
    assert world.enrolled_emails() == Counter({"ada@example.com": 1})


@pytest.mark.parametrize(
    ("share", "state"), [(0.5, "failed"), (None, "success")], ids=["default-policy", "never-fail"]
)
def test_most_rows_bad_fails_the_task_but_keeps_the_result(world: ReplyWorld, share, state) -> None:
    rows = [{"email": e} for e in ("ada@example.com", "bad-1", "bad-2", "bad-3")]
    kwargs: dict[str, Any] = {} if share == 0.5 else {"max_not_processed_share": share}
    run = world.run(world.dag(upstream_rows=rows, column_map={"email": "email"}, **kwargs))

    assert run.states[TASK] == state
    result = task_xcom(run.dag_run, TASK)
    assert result["added"] == ["ada@example.com"]
    assert {k: o["reason"] for k, o in result["not_processed"].items()} == dict.fromkeys(
        ("bad-1", "bad-2", "bad-3"), "invalidEmail"
    )
    check_accounting(result, {"ada@example.com", "bad-1", "bad-2", "bad-3"})
    assert world.enrolled_emails() == Counter({"ada@example.com": 1})


def test_a_set_over_max_xcom_keys_stays_in_the_state_and_xcom_says_where(world: ReplyWorld) -> None:
    from airflow_provider_sequences.sync_state import read_sync_state

    rows = [{"email": e} for e in ("ada@example.com", "grace@example.com", "alan@example.com", "bad-1")]
    run = world.run(
        world.dag(
            upstream_rows=rows, column_map={"email": "email"}, max_xcom_keys=2, max_not_processed_share=None
        )
    )

    assert run.states[TASK] == "success"
    result = run.result
    # Three added keys are over the limit: their count stays, the keys are in the state.
    assert "added" not in result
    assert result["omitted"] == ["added"]
    assert result["stats"]["added"] == 3
    assert list(result["not_processed"]) == ["bad-1"]
    assert result["reasons"] == {"invalidEmail": 1}
    where = result["keys_in_state"]
    assert where["state_conn_id"] == STATE_CONN
    state = read_sync_state(service="reply", sequence_id=where["sequence_id"], state_conn_id=STATE_CONN)
    this_run = state[state.last_run_id == where["last_run_id"]]
    assert sorted(this_run[this_run.status == "added"].contact_key) == [
        "ada@example.com",
        "alan@example.com",
        "grace@example.com",
    ]
    assert world.enrolled_emails() == Counter(
        dict.fromkeys(this_run[this_run.status == "added"].contact_key, 1)
    )


# -- mapping, templates, links, example DAGs -----------------------------------------------------


def test_mapped_over_shards_each_shard_has_its_own_result(world: ReplyWorld) -> None:
    shards = [
        [{"email": f"a{i}@example.com"} for i in range(3)] + [{"email": "broken"}],
        [{"email": f"b{i}@example.com"} for i in range(4)],
    ]
    dag = world.dag(expand_contacts=shards, column_map={"email": "email"})
    run = world.run(dag)

    assert run.states == {f"{TASK}[0]": "success", f"{TASK}[1]": "success"}
    results = [task_xcom(run.dag_run, TASK, map_index=i) for i in range(2)]
    assert sorted(results[0]["added"]) == ["a0@example.com", "a1@example.com", "a2@example.com"]
    assert list(results[0]["not_processed"]) == ["broken"]
    assert sorted(results[1]["added"]) == [f"b{i}@example.com" for i in range(4)]
    assert results[1]["not_processed"] == {}
    for shard, result in zip(shards, results, strict=True):
        check_accounting(result, {row["email"] for row in shard})
    everyone = {row["email"] for shard in shards for row in shard}
    assert {k for r in results for k in [*r["added"], *r["not_processed"]]} == everyone
    added = [k for r in results for k in r["added"]]
    assert world.enrolled_emails() == Counter(dict.fromkeys(added, 1))


def test_templated_sequence_and_start_from_render_and_the_link_follows(world: ReplyWorld) -> None:
    second = world.sim.add_sequence("Second", owner_user_id=world.account.user_id)
    start_from = "2031-05-04T03:02:01+00:00"
    dag = world.dag(
        params={"sequence_id": world.account.sequence_id, "start_from": "", "dry_run": False},
        sequence_id="{{ params.sequence_id }}",
        start_from="{{ params.start_from }}",
        # Templates render to text: "False" must not turn the run into a dry run.
        dry_run="{{ params.dry_run }}",
        full_resync="{{ params.dry_run }}",
        upstream_rows=[{"email": "ada@example.com"}, {"email": "grace@example.com"}],
        column_map={"email": "email"},
    )
    run = world.run(dag, sequence_id=second, start_from=start_from)

    assert run.states[TASK] == "success"
    assert sorted(run.result["added"]) == ["ada@example.com", "grace@example.com"]
    check_accounting(run.result, {"ada@example.com", "grace@example.com"})
    assert world.enrolled_emails(world.account.sequence_id) == Counter()
    assert world.enrolled_emails(second) == Counter({"ada@example.com": 1, "grace@example.com": 1})
    links = world.sim.sequence_contacts(second)
    assert [link["startFrom"] for link in links] == [start_from, start_from]
    # The extra link is stored when the task ends, from the rendered operator.
    link = task_xcom(run.dag_run, TASK, key="_link_SequenceLink")
    assert link == f"https://run.reply.io/#/sequences/{second}"


def test_the_operator_declares_its_link_and_its_sequence_asset() -> None:
    from airflow.sdk import Asset

    from airflow_provider_sequences.links import SequenceLink, SyncReportLink

    operator = ReplyAddContactsToSequenceOperator(
        task_id=TASK, sequence_id=1001, contacts=[], column_map={"email": "email"}
    )
    assert [type(link) for link in operator.operator_extra_links] == [SequenceLink, SyncReportLink]
    assert operator.operator_extra_links[0].name == "Sequence"
    assert operator.operator_extra_links[0].get_link(operator, ti_key=None) == (
        "https://run.reply.io/#/sequences/1001"
    )
    assert operator.outlets == [Asset(uri="reply://sequences/1001", name="reply-sequence-1001")]


def test_a_run_updates_the_sequence_asset(world: ReplyWorld) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    run = world.run(world.dag(upstream_rows=[{"email": "ada@example.com"}], column_map={"email": "email"}))

    assert run.states[TASK] == "success"
    assert run.result["added"] == ["ada@example.com"]
    check_accounting(run.result, {"ada@example.com"})
    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == run.dag_run.dag_id,
                AssetEvent.source_run_id == run.dag_run.run_id,
            )
        ).all()
        uris = [event.asset.uri for event in events]
    assert uris == [f"reply://sequences/{world.account.sequence_id}"]


def test_the_example_dags_import_without_errors(airflow_db) -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    bag = DagBag(str(EXAMPLE_DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {
        "reply_nightly_crm_sync",
        "reply_from_upstream_task",
        "whippy_nightly_crm_sync",
    }
    nightly = bag.get_dag("reply_nightly_crm_sync")
    assert nightly is not None
    task = nightly.get_task("enrol_new_leads")
    assert isinstance(task, ReplyAddContactsToSequenceOperator)
    assert task.sequence_id == "{{ params.sequence_id }}"
    assert "start_from" in task.template_fields
    assert set(nightly.task_ids) == {"enrol_new_leads", "report"}


# -- what Reply's own CLI reports about the real server ------------------------------------------


def test_a_quarter_of_the_answers_lost_ends_with_everyone_added_once(world: ReplyWorld) -> None:
    """The issue's night: 2,400 new contacts, a quarter of the answers lost on the way back.
    Contacts a lost answer enrolled are added, never data failures, and nobody is named in a
    bulk add twice (observed, Reply refuses a member as invalidInput or moves it on)."""
    rows = [
        {"crm_id": f"crm-{i}", "email": f"lead{i}@example.com", "first_name": f"Lead{i}"}
        for i in range(2_400)
    ]
    email_of = {row["crm_id"]: row["email"] for row in rows}
    dag = world.dag(
        upstream_rows=rows,
        key_column="crm_id",
        column_map={"email": "email", "first_name": "firstName"},
        batch_size=200,
        max_not_processed_share=None,
    )
    world.sim.faults.configure(FaultPlan(seed=7, lost_response_rate=0.25))
    added: set[str] = set()
    for _night in range(3):
        run = world.run(dag)
        assert run.states[TASK] == "success"
        check_accounting(run.result)
        added |= set(run.result["added"])
        # What is not processed is a request to retry, never a verdict on the contact.
        assert {o["reason"] for o in run.result["not_processed"].values()} <= {"requestFailed"}
        if not run.result["not_processed"]:
            break
    assert {r.fault for r in world.sim.requests} >= {"lost_response"}
    assert added == set(email_of)
    assert world.enrolled_emails() == Counter(dict.fromkeys(email_of.values(), 1))
    assert world.sim.readds == {}


@pytest.mark.parametrize("start_step", [None, 2], ids=["first-step", "second-step"])
def test_a_first_night_on_a_sequence_with_members_sends_them_nothing(world: ReplyWorld, start_step) -> None:
    sim, owner, sequence = world.sim, world.account.user_id, world.account.sequence_id
    members = [
        sim.add_contact(f"member{i}@example.com", owner_user_id=owner, firstName="M") for i in range(3)
    ]
    # Enrolled by hand before the sync's first night, at the first step.
    assert sorted(ReplyHook().add_contacts_to_sequence(sequence, members)["added"]) == members
    steps = [step["id"] for step in ReplyHook().list_steps(sequence)]
    rows = [{"email": f"member{i}@example.com", "first_name": "Member"} for i in range(3)]
    rows += [{"email": f"new{i}@example.com", "first_name": "New"} for i in range(5)]
    kwargs: dict[str, Any] = {"start_step_id": steps[start_step - 1]} if start_step else {}
    dag = world.dag(upstream_rows=rows, column_map={"email": "email", "first_name": "firstName"}, **kwargs)
    seen = len(sim.requests)
    run = world.run(dag)

    # The members are where they should be: reported so, not failures, not sent.
    assert run.states[TASK] == "success"
    result = run.result
    assert sorted(result["added"]) == [f"new{i}@example.com" for i in range(5)]
    assert {k: o["reason"] for k, o in result["not_processed"].items()} == {
        f"member{i}@example.com": "contactAlreadyInSequence" for i in range(3)
    }
    check_accounting(result, {row["email"] for row in rows})
    assert sim.readds == {}
    assert sim.moves == {}
    # One read of the sequence's contacts, a page, before the first bulk add.
    contacts_path = f"/v3/sequences/{sequence}/contacts"
    assert [r.path for r in sim.requests[seen:]].count(contacts_path) == 1
    assert [(r.path, r.items) for r in world.writes(seen)] == [(IMPORT, 8), (world.bulk_path, 5)]

    # A later night: a teammate enrolled one more by hand. With a start step the sync reads the
    # sequence first again, so the member is never moved on; without one, Reply's refusal of it
    # is read as what it is.
    late = sim.add_contact("late@example.com", owner_user_id=owner, firstName="L")
    assert ReplyHook().add_contacts_to_sequence(sequence, [late])["added"] == [late]
    dag = world.dag(
        upstream_rows=[*rows, {"email": "late@example.com", "first_name": "Late"}],
        column_map={"email": "email", "first_name": "firstName"},
        **kwargs,
    )
    again = world.run(dag)
    assert again.states[TASK] == "success"
    assert again.result["added"] == []
    assert again.result["not_processed"]["late@example.com"]["reason"] == "contactAlreadyInSequence"
    assert sim.moves == {}
    if start_step:
        assert sim.readds == {}
    enrolled = world.enrolled_ids()
    assert set(enrolled.values()) == {1}
    assert len(enrolled) == 9


def test_rows_without_a_first_name_are_refused_before_anything_is_sent(world: ReplyWorld) -> None:
    rows = [
        {"email": "ada@example.com", "first_name": "Ada"},
        {"email": "anon@example.com", "first_name": "  "},
        {"email": "none@example.com", "first_name": None},
    ]
    dag = world.dag(upstream_rows=rows, column_map={"email": "email", "first_name": "firstName"})
    run = world.run(dag)

    result = task_xcom(run.dag_run, TASK)
    assert result["added"] == ["ada@example.com"]
    assert result["not_processed"] == {
        email: {"reason": "missingField", "detail": "firstName is empty (column 'first_name')"}
        for email in ("anon@example.com", "none@example.com")
    }
    assert [(r.path, r.items) for r in world.writes()] == [(IMPORT, 1), (world.bulk_path, 1)]

    # The opt-in fallback imports them with it instead (rows refused earlier for their data are
    # sent again when their data changes, or with full_resync).
    fallback = world.dag(
        "_fallback",
        upstream_rows=rows,
        column_map={"email": "email", "first_name": "firstName"},
        first_name_fallback="there",
        full_resync=True,
    )
    again = world.run(fallback)
    assert sorted(again.result["added"]) == ["ada@example.com", "anon@example.com", "none@example.com"]
    assert world.sim.readds == {}
    anon = world.sim.contact_by_email("anon@example.com")
    assert anon is not None
    assert anon["firstName"] == "there"


def test_a_column_map_without_a_first_name_is_a_clear_configuration_error() -> None:
    from airflow_provider_sequences.adapters.reply import ReplyAdapter

    operator = ReplyAddContactsToSequenceOperator(
        task_id=TASK, sequence_id=1001, contacts=[], column_map={"email": "email"}
    )
    adapter = ReplyAdapter(ReplyHook(), 1001)
    with pytest.raises(ValueError, match="column_map maps no column to 'firstName': Reply requires"):
        operator.prepare_spec(adapter)
