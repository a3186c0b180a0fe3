"""The contract check (``python -m airflow_provider_sequences.check``) against both simulators,
in both behaviours, through Airflow connections from ``AIRFLOW_CONN_...`` variables."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sequences.check import main
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.testing import (
    ReplyAccount,
    WhippyAccount,
    connection_env_var,
    connection_json,
)
from airflow_provider_sequences.testing.base import BEHAVIOURS
from airflow_provider_sequences.testing.reply import ReplySimulator
from airflow_provider_sequences.testing.whippy import WhippySimulator

REPLY_CONN = "check_reply"
WHIPPY_CONN = "check_whippy"

both_behaviours = pytest.mark.parametrize("simulator_behaviour", BEHAVIOURS)
documented_only = pytest.mark.parametrize("simulator_behaviour", ["documented"])

#: People already in the sequences: none of their values may reach the shapes file.
REPLY_MEMBERS = [
    {"email": "grace.hopper@example.org", "firstName": "Grace", "lastName": "Hopper", "company": "Navy"},
    {"email": "Alan.Turing@example.org", "firstName": "Alan", "lastName": "Turing", "company": "NPL"},
]
WHIPPY_MEMBERS = [
    {
        "phone": "+14155550101",
        "email": "grace.hopper@example.org",
        "name": "Grace Hopper",
        "external_id": "crm-1",
    },
    {
        "phone": "+442079460018",
        "email": "alan.turing@example.org",
        "name": "Alan Turing",
        "external_id": "crm-2",
    },
]
REPLY_TEST_CONTACT = "ada.lovelace@example.org"
WHIPPY_TEST_CONTACT = "+14155550123"

_VERDICT_LINE = re.compile(r"^  (held|violated|not seen) +(\S+)  ", re.M)


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    shapes: str

    @property
    def verdicts(self) -> dict[str, str]:
        return {name: verdict for verdict, name in _VERDICT_LINE.findall(self.stdout)}

    def ids(self, verdict: str) -> set[str]:
        return {name for name, seen in self.verdicts.items() if seen == verdict}


def run_check(tmp_path: Path, conn_id: str, *args: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    shapes = tmp_path / "shapes.json"
    status = main(["--conn-id", conn_id, "--out", str(shapes), *args], out=out, err=err)
    return Run(status, out.getvalue(), err.getvalue(), shapes.read_text() if shapes.exists() else "")


@dataclass
class ReplyWorld:
    sim: ReplySimulator
    account: ReplyAccount

    @property
    def observed(self) -> bool:
        return self.sim.behaviour == "observed"


@dataclass
class WhippyWorld:
    sim: WhippySimulator
    account: WhippyAccount

    @property
    def observed(self) -> bool:
        return self.sim.behaviour == "observed"


@pytest.fixture
def reply(reply_simulator: ReplySimulator, reply_account: ReplyAccount, monkeypatch) -> ReplyWorld:
    """The Reply simulator (of the test's ``simulator_behaviour``) behind connection ``check_reply``."""
    monkeypatch.setenv(
        connection_env_var(REPLY_CONN), connection_json("reply", reply_simulator.url, reply_account.api_key)
    )
    return ReplyWorld(reply_simulator, reply_account)


@pytest.fixture
def whippy(whippy_simulator: WhippySimulator, whippy_account: WhippyAccount, monkeypatch) -> WhippyWorld:
    """The Whippy simulator (of the test's ``simulator_behaviour``) behind connection ``check_whippy``."""
    monkeypatch.setenv(
        connection_env_var(WHIPPY_CONN),
        connection_json("whippy", whippy_simulator.url, whippy_account.api_key),
    )
    return WhippyWorld(whippy_simulator, whippy_account)


def _enrol_reply_members(world: ReplyWorld) -> None:
    hook = ReplyHook(REPLY_CONN)
    imported = hook.import_contacts(REPLY_MEMBERS)
    ids = [item["id"] for item in imported["items"]]
    assert all(isinstance(i, int) for i in ids)
    hook.add_contacts_to_sequence(world.account.sequence_id, ids)


def _enrol_whippy_members(world: WhippyWorld) -> None:
    WhippyHook(WHIPPY_CONN).create_sequence_contacts(world.account.sequence_id, WHIPPY_MEMBERS)
    world.sim.wait_idle()
    assert len(world.sim.step_contacts(world.account.sequence_id)) == len(WHIPPY_MEMBERS)


def _assert_no_values(run: Run, values: list[str]) -> None:
    """Neither the shapes file nor what was printed holds a value of the account's data."""
    assert run.shapes, "no shapes file was written"
    json.loads(run.shapes)
    for value in values:
        for where, text in (("shapes file", run.shapes), ("output", run.stdout + run.stderr)):
            assert value.lower() not in text.lower(), f"{value!r} is in the {where}"


def _reply_values(world: ReplyWorld) -> list[str]:
    people = [str(v) for member in REPLY_MEMBERS for v in member.values()]
    return [*people, REPLY_TEST_CONTACT, "owner@example.com", "Nightly onboarding", world.account.api_key]


def _whippy_values(world: WhippyWorld) -> list[str]:
    people = [str(v) for member in WHIPPY_MEMBERS for v in member.values()]
    return [
        *people,
        WHIPPY_TEST_CONTACT,
        world.account.channel_phone,
        "Sales line",
        "Nightly onboarding",
        world.account.api_key,
    ]


# -- Reply ------------------------------------------------------------------------------------

#: What the observed Reply departs from, read-only (reply.md, "added 2026-12").
REPLY_OBSERVED_READ = {"sequenceContacts.fields", "errors.missingSequence"}
#: ... and what a test contact shows besides.
REPLY_OBSERVED_WRITE = {"import.firstNameOptional", "import.statuses", "bulkAdd.alreadyInSequence"}


@both_behaviours
def test_reply_read_only(reply: ReplyWorld, tmp_path: Path) -> None:
    _enrol_reply_members(reply)
    before, start = reply.sim.enrolments, len(reply.sim.requests)
    run = run_check(tmp_path, REPLY_CONN, "--sequence-id", str(reply.account.sequence_id))
    verdicts = run.verdicts
    for held in (
        "auth.whoami",
        "identity.actingUser",
        "auth.wrongKey",
        "scopes.contactsWrite",
        "sequence.ready",
    ):
        assert verdicts[held] == "held", run.stdout
    assert verdicts["rateLimit.header"] == "not seen"
    if not reply.observed:
        assert run.ids("violated") == set(), run.stdout
        assert run.status == 0
        assert verdicts["sequenceContacts.fields"] == "held"
        assert verdicts["errors.problemJson"] == "held"
    else:
        assert run.ids("violated") >= REPLY_OBSERVED_READ, run.stdout
        assert run.status == 1
    # Read-only: nobody was enrolled, nothing imported.
    assert reply.sim.enrolments == before
    assert [r for r in reply.sim.requests[start:] if r.method == "POST" and (r.status or 0) < 300] == []
    _assert_no_values(run, _reply_values(reply))


@both_behaviours
def test_reply_write_test_contact(reply: ReplyWorld, tmp_path: Path) -> None:
    _enrol_reply_members(reply)
    sequence_id = reply.account.sequence_id
    run = run_check(
        tmp_path, REPLY_CONN, "--sequence-id", str(sequence_id), "--write-test-contact", REPLY_TEST_CONTACT
    )
    assert run.verdicts["write.readBack"] == "held", run.stdout
    assert "recognisable by contactId and email" in run.stdout
    contact = reply.sim.contact_by_email(REPLY_TEST_CONTACT)
    assert contact is not None
    # Enrolled exactly once, though the check also tried to add it again.
    assert reply.sim.enrolments[(sequence_id, contact["id"])] == 1
    # Contact ids keying notProcessed are data: the shape folds them into one "<key>".
    again = json.loads(run.shapes)["endpoints"]["POST /v3/sequences/{id}/contact-links/bulk (a member again)"]
    refused = again["bodies"]["200"]["fields"]["notProcessed"]["fields"]
    assert list(refused) == ["<key>"]
    assert refused["<key>"]["fields"]["error"] == {"type": ["string"]}
    if not reply.observed:
        assert run.ids("violated") == set(), run.stdout
        assert run.status == 0
    else:
        assert run.ids("violated") >= REPLY_OBSERVED_READ | REPLY_OBSERVED_WRITE, run.stdout
        assert run.status == 1
    _assert_no_values(run, _reply_values(reply))


@both_behaviours
def test_reply_missing_scope_is_a_violation(reply: ReplyWorld, tmp_path: Path, monkeypatch) -> None:
    reply.sim.add_api_key(
        "read-only-key", reply.account.user_id, scopes={"contacts:read", "sequences:read", "contacts:write"}
    )
    monkeypatch.setenv(
        connection_env_var(REPLY_CONN), connection_json("reply", reply.sim.url, "read-only-key")
    )
    run = run_check(tmp_path, REPLY_CONN)
    expected = {"scopes.sequencesOperate"} | ({"errors.missingSequence"} if reply.observed else set())
    assert run.ids("violated") == expected, run.stdout
    assert "the key may not add contacts to sequences" in run.stdout
    assert run.status == 1
    assert "read-only-key" not in run.stdout + run.stderr + run.shapes


@documented_only
def test_reply_retry_after_is_judged_when_a_429_comes(reply: ReplyWorld, tmp_path: Path) -> None:
    reply.sim.faults.force(None, None, "rate_limit")
    run = run_check(tmp_path, REPLY_CONN)
    assert run.verdicts["rateLimit.header"] == "held", run.stdout
    assert run.status == 0
    assert "retry-after" in json.loads(run.shapes)["endpoints"]["GET /v3/sequences?top=1000"]["headers"]


@both_behaviours
def test_reply_organization_key_without_acting_user(reply: ReplyWorld, tmp_path: Path, monkeypatch) -> None:
    reply.sim.add_api_key("org-key", reply.account.user_id, kind="organization")
    monkeypatch.setenv(connection_env_var(REPLY_CONN), connection_json("reply", reply.sim.url, "org-key"))
    run = run_check(tmp_path, REPLY_CONN)
    assert run.verdicts == {"identity.actingUser": "violated"}, run.stdout
    assert "set the connection extra acting_user_id" in run.stdout
    code = "USER_REQUIRED" if reply.observed else "user.notSpecified"
    assert f"answered {400 + 3 * reply.observed} {code}" in run.stdout
    assert run.status == 1
    assert "org-key" not in run.stdout + run.stderr + run.shapes

    # With the acting user named by email: the observed server wants the team too.
    monkeypatch.setenv(
        connection_env_var(REPLY_CONN),
        connection_json("reply", reply.sim.url, "org-key", acting_user_email="owner@example.com"),
    )
    run = run_check(tmp_path, REPLY_CONN)
    if reply.observed:
        assert run.verdicts == {"identity.actingUser": "violated"}, run.stdout
        assert "TEAM_REQUIRED" in run.stdout
        assert "set the connection extra acting_team_id (X-Team-Id)" in run.stdout
        assert run.status == 1
    else:
        assert run.verdicts["identity.actingUser"] == "held"
        assert "Reply accepted the key with X-User-Email" in run.stdout
        assert run.status == 0

    # ... and the team named too: both behaviours accept it.
    monkeypatch.setenv(
        connection_env_var(REPLY_CONN),
        connection_json(
            "reply", reply.sim.url, "org-key", acting_user_email="owner@example.com", acting_team_id="1"
        ),
    )
    run = run_check(tmp_path, REPLY_CONN)
    assert run.verdicts["identity.actingUser"] == "held", run.stdout
    assert "Reply accepted the key with X-User-Email, X-Team-Id" in run.stdout
    assert "owner@example.com" not in run.shapes


@both_behaviours
def test_reply_teammates_contact_is_never_enrolled(reply: ReplyWorld, tmp_path: Path) -> None:
    teammate = reply.sim.add_user("teammate@example.com")
    theirs = reply.sim.add_contact(REPLY_TEST_CONTACT, owner_user_id=teammate, firstName="Ada")
    sequence_id = reply.account.sequence_id
    run = run_check(
        tmp_path, REPLY_CONN, "--sequence-id", str(sequence_id), "--write-test-contact", REPLY_TEST_CONTACT
    )
    assert (sequence_id, theirs) not in reply.sim.enrolments
    if reply.observed:
        # Skipped, naming the teammate's contact: the check does not add it.
        assert run.verdicts["write.readBack"] == "not seen", run.stdout
        assert "skipReason contactOwnedByTeammate" in run.stdout
        assert reply.sim.foreign_adds == {}
    else:
        # The documented import fails the item: nothing to enrol either.
        assert run.verdicts["write.readBack"] == "violated", run.stdout


@both_behaviours
def test_reply_page_cap_shows_on_a_long_sequence(reply: ReplyWorld, tmp_path: Path) -> None:
    hook = ReplyHook(REPLY_CONN)
    people = [{"email": f"lead{i}@example.org", "firstName": f"Lead{i}"} for i in range(120)]
    ids = [item["id"] for item in hook.import_contacts(people)["items"]]
    hook.add_contacts_to_sequence(reply.account.sequence_id, ids)
    run = run_check(tmp_path, REPLY_CONN, "--sequence-id", str(reply.account.sequence_id))
    if reply.observed:
        assert run.verdicts["pageSize.sequenceContacts"] == "violated", run.stdout
        assert "top=1000 answers pages of 100 items with hasMore true" in run.stdout
    else:
        assert run.verdicts["pageSize.sequenceContacts"] == "held", run.stdout
    assert run.verdicts["paging.sequenceContacts"] == "held"
    _assert_no_values(run, [p["email"] for p in people])


@both_behaviours
@pytest.mark.reply_simulator(import_async_threshold=0)
def test_reply_background_import(reply: ReplyWorld, tmp_path: Path) -> None:
    run = run_check(
        tmp_path,
        REPLY_CONN,
        "--sequence-id",
        str(reply.account.sequence_id),
        "--write-test-contact",
        REPLY_TEST_CONTACT,
    )
    assert run.verdicts["write.readBack"] == "held", run.stdout
    if reply.observed:
        assert run.verdicts["import.backgroundJob"] == "violated", run.stdout
        assert "jsonDataResult" in run.stdout
    else:
        assert run.verdicts["import.backgroundJob"] == "held", run.stdout
    assert "background-jobs" not in run.shapes  # labelled by the endpoint asked, not its job id


@both_behaviours
def test_reply_archived_or_stepless_sequence_is_a_violation(reply: ReplyWorld, tmp_path: Path) -> None:
    reply.sim.archive_sequence(reply.account.sequence_id)
    run = run_check(
        tmp_path,
        REPLY_CONN,
        "--sequence-id",
        str(reply.account.sequence_id),
        "--write-test-contact",
        REPLY_TEST_CONTACT,
    )
    assert run.verdicts["sequence.ready"] == "violated", run.stdout
    assert "the sequence is archived" in run.stdout
    assert "the test contact was not sent" in run.stdout
    assert reply.sim.contact_by_email(REPLY_TEST_CONTACT) is None
    assert run.status == 1

    stepless = reply.sim.add_sequence("No steps", owner_user_id=reply.account.user_id, steps=0)
    run = run_check(tmp_path, REPLY_CONN, "--sequence-id", str(stepless))
    assert run.verdicts["sequence.ready"] == "violated", run.stdout
    assert "the sequence has no steps" in run.stdout


# -- Whippy -----------------------------------------------------------------------------------

#: What the observed Whippy departs from, read-only (whippy.md, "added 2026-12").
WHIPPY_OBSERVED_READ = {
    "paging.channels",
    "stepContacts.externalId",
    "pageSize.stepContacts",
    "channels.email",
    "sequence.details",
    "errors.itemNamed",
}


@both_behaviours
def test_whippy_read_only(whippy: WhippyWorld, tmp_path: Path) -> None:
    _enrol_whippy_members(whippy)
    before, start = whippy.sim.enrolments, len(whippy.sim.requests)
    run = run_check(tmp_path, WHIPPY_CONN, "--sequence-id", whippy.account.sequence_id)
    verdicts = run.verdicts
    for held in ("auth.wrongKey", "stepContacts.phoneE164", "stepContacts.email", "sequence.ready"):
        assert verdicts[held] == "held", run.stdout
    if not whippy.observed:
        assert run.ids("violated") == set(), run.stdout
        assert run.status == 0
        assert verdicts["stepContacts.externalId"] == "held"
        assert verdicts["errors.itemNamed"] == "held"
    else:
        assert run.ids("violated") >= WHIPPY_OBSERVED_READ, run.stdout
        assert run.status == 1
    whippy.sim.wait_idle()
    assert whippy.sim.enrolments == before
    assert [r for r in whippy.sim.requests[start:] if r.method == "POST" and (r.status or 0) < 300] == []
    _assert_no_values(run, _whippy_values(whippy))


@both_behaviours
def test_whippy_write_test_contact(whippy: WhippyWorld, tmp_path: Path) -> None:
    sequence_id = whippy.account.sequence_id
    run = run_check(
        tmp_path, WHIPPY_CONN, "--sequence-id", sequence_id, "--write-test-contact", "+1 415 555 0123"
    )
    assert run.verdicts["create.accepted"] == "held", run.stdout
    assert run.verdicts["write.readBack"] == "held", run.stdout
    contact = whippy.sim.contact_by(phone=WHIPPY_TEST_CONTACT)
    assert contact is not None
    assert whippy.sim.enrolments == {(sequence_id, contact["id"]): 1}
    if not whippy.observed:
        assert "recognisable by phone (E.164) and external_id" in run.stdout
        assert run.ids("violated") == set(), run.stdout
        assert run.status == 0
    else:
        assert "recognisable by phone (E.164)" in run.stdout
        assert run.verdicts["stepContacts.externalId"] == "violated"
        assert run.status == 1
    _assert_no_values(run, _whippy_values(whippy))

    # Run again: the contact is a member now, and is not sent (messaged) again.
    again = run_check(
        tmp_path, WHIPPY_CONN, "--sequence-id", sequence_id, "--write-test-contact", WHIPPY_TEST_CONTACT
    )
    assert again.verdicts["write.readBack"] == "held", again.stdout
    assert "already in the sequence: it was not sent again" in again.stdout
    whippy.sim.wait_idle()
    assert whippy.sim.enrolments == {(sequence_id, contact["id"]): 1}


@both_behaviours
def test_whippy_read_back_pages_a_long_step(whippy: WhippyWorld, tmp_path: Path) -> None:
    sequence_id = whippy.account.sequence_id
    people = [{"phone": f"+1415555{i:04d}", "name": f"Lead {i}"} for i in range(200, 330)]
    WhippyHook(WHIPPY_CONN).create_sequence_contacts(sequence_id, people)
    whippy.sim.wait_idle()
    run = run_check(
        tmp_path, WHIPPY_CONN, "--sequence-id", sequence_id, "--write-test-contact", WHIPPY_TEST_CONTACT
    )
    # The test contact is the 131st: with pages of 100 it is found on the second.
    assert run.verdicts["write.readBack"] == "held", run.stdout
    if whippy.observed:
        assert run.verdicts["pageSize.stepContacts"] == "violated", run.stdout
        assert (
            "limit=500 (the documented maximum) answered 422; limit=100 works: keep the connection"
            in run.stdout
        )
    else:
        assert run.verdicts["pageSize.stepContacts"] == "held", run.stdout
        assert "the connection extra page_size=500 reads a step in fewer requests" in run.stdout
    _assert_no_values(run, [p["phone"] for p in people])


@both_behaviours
@pytest.mark.whippy_simulator(processing_delay=0.5)
def test_whippy_lost_answer_is_read_back_not_resent(whippy: WhippyWorld, tmp_path: Path, monkeypatch) -> None:
    sequence_id = whippy.account.sequence_id
    send = WhippyHook.create_sequence_contacts

    def lose_the_answer(hook: WhippyHook, sequence: str, to: list[dict[str, Any]], **options: Any) -> Any:
        if to[0].get("phone") == WHIPPY_TEST_CONTACT:
            # Whippy takes the contact; its answer never arrives.
            whippy.sim.faults.force("lost_response")
        return send(hook, sequence, to, **options)

    monkeypatch.setattr(WhippyHook, "create_sequence_contacts", lose_the_answer)
    run = run_check(
        tmp_path, WHIPPY_CONN, "--sequence-id", sequence_id, "--write-test-contact", WHIPPY_TEST_CONTACT
    )
    assert "the test contact's answer was lost; reading back whether it arrived" in run.stdout, run.stdout
    assert run.verdicts["write.readBack"] == "held", run.stdout
    whippy.sim.wait_idle()
    contact = whippy.sim.contact_by(phone=WHIPPY_TEST_CONTACT)
    assert contact is not None
    assert whippy.sim.enrolments == {(sequence_id, contact["id"]): 1}


@both_behaviours
def test_whippy_ignored_contact_is_a_violation(whippy: WhippyWorld, tmp_path: Path) -> None:
    # An email step silently ignores a contact without an email.
    run = run_check(
        tmp_path,
        WHIPPY_CONN,
        "--sequence-id",
        whippy.account.email_sequence_id,
        "--write-test-contact",
        WHIPPY_TEST_CONTACT,
        "--wait",
        "1",
    )
    assert run.verdicts["write.readBack"] == "violated", run.stdout
    assert "Whippy may have ignored it" in run.stdout
    assert run.status == 1
    whippy.sim.wait_idle()
    assert len(whippy.sim.ignored) == 1


@both_behaviours
def test_whippy_rate_limit_header_is_judged_when_a_429_comes(whippy: WhippyWorld, tmp_path: Path) -> None:
    whippy.sim.faults.force(None, "rate_limit")
    run = run_check(tmp_path, WHIPPY_CONN)
    assert run.verdicts["rateLimit.header"] == "held", run.stdout
    headers = json.loads(run.shapes)["endpoints"]["GET /v1/channels?limit=500"]["headers"]
    assert "x-ratelimit-remaining-interval-milliseconds" in headers


@documented_only
def test_whippy_draft_sequence_is_a_violation(whippy: WhippyWorld, tmp_path: Path) -> None:
    draft = whippy.sim.add_sequence("Not ready", status="draft")
    run = run_check(
        tmp_path, WHIPPY_CONN, "--sequence-id", draft, "--write-test-contact", WHIPPY_TEST_CONTACT
    )
    assert run.verdicts["sequence.ready"] == "violated"
    assert "the sequence is a draft" in run.stdout
    assert "the test contact was not sent" in run.stdout
    assert whippy.sim.contact_by(phone=WHIPPY_TEST_CONTACT) is None
    assert run.status == 1


@documented_only
def test_no_probes_sends_only_reads(reply: ReplyWorld, whippy: WhippyWorld, tmp_path: Path) -> None:
    for conn_id, sim in ((REPLY_CONN, reply.sim), (WHIPPY_CONN, whippy.sim)):
        run = run_check(tmp_path, conn_id, "--no-probes")
        assert run.status == 0, run.stdout
        assert {r.method for r in sim.requests} == {"GET"}
        assert not {"scopes.contactsWrite", "errors.itemNamed"} & set(run.verdicts)


# -- usage and connection errors: exit status 2, never the key ---------------------------------


@documented_only
def test_usage_errors(reply: ReplyWorld, tmp_path: Path, monkeypatch) -> None:
    assert run_check(tmp_path, "no_such_connection").status == 2
    monkeypatch.setenv(connection_env_var("check_http"), json.dumps({"conn_type": "http", "host": "x"}))
    unknown = run_check(tmp_path, "check_http")
    assert unknown.status == 2
    assert "the check knows 'reply' and 'whippy'" in unknown.stderr
    no_sequence = run_check(tmp_path, REPLY_CONN, "--write-test-contact", REPLY_TEST_CONTACT)
    assert no_sequence.status == 2
    assert "--write-test-contact needs --sequence-id" in no_sequence.stderr
    by_phone = run_check(tmp_path, REPLY_CONN, "--sequence-id", "1", "--write-test-contact", "+14155550123")
    assert by_phone.status == 2
    assert "by email" in by_phone.stderr
    assert reply.sim.requests == []


@documented_only
def test_wrong_key_and_no_answer(whippy: WhippyWorld, tmp_path: Path, monkeypatch) -> None:
    secret = "whippy-key-that-was-revoked"
    monkeypatch.setenv(connection_env_var(WHIPPY_CONN), connection_json("whippy", whippy.sim.url, secret))
    refused = run_check(tmp_path, WHIPPY_CONN)
    assert refused.status == 2
    assert "Whippy refused the API key (401)" in refused.stderr
    assert secret not in refused.stdout + refused.stderr + refused.shapes
    url = whippy.sim.url
    whippy.sim.stop()
    monkeypatch.setenv(
        connection_env_var(WHIPPY_CONN),
        connection_json("whippy", url, whippy.account.api_key, max_attempts=1),
    )
    gone = run_check(tmp_path, WHIPPY_CONN)
    assert gone.status == 2
    assert "could not reach Whippy" in gone.stderr
    assert whippy.account.api_key not in gone.stdout + gone.stderr


@documented_only
def test_runs_as_a_module(reply: ReplyWorld, tmp_path: Path) -> None:
    shapes = tmp_path / "reply-shapes.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_provider_sequences.check",
            "--conn-id",
            REPLY_CONN,
            "--out",
            str(shapes),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^  held +auth\.whoami ", done.stdout, re.M)
    assert json.loads(shapes.read_text())["service"] == "reply"
    assert reply.account.api_key not in done.stdout + done.stderr + shapes.read_text()
