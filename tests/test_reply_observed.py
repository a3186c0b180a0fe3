"""Reply's observed behaviour (what Reply's own CLI reports the real server does), end to end
over real HTTP: the simulator answers so, and the hook and adapter cope.

Each test names the line of ``shared/api/reply.md`` ("What Reply's own CLI reports about the
real server") it models.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import requests

from airflow_provider_sequences.adapters.reply import ReplyAdapter, ReplyEnrolment
from airflow_provider_sequences.exceptions import SequencesApiError, SyncConfigurationError
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.testing import (
    ReplyAccount,
    ReplySimulator,
    connection_env_var,
    connection_json,
)

pytestmark = [pytest.mark.reply_simulator(behaviour="observed"), pytest.mark.usefixtures("reply_connection")]


def post(sim: ReplySimulator, account: ReplyAccount, path: str, body: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {account.api_key}"}
    return requests.post(sim.url + path, json=body, headers=headers, timeout=10)


def batch(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


# -- bulk add (reply.md lines 88-95) -------------------------------------------------------------


def test_every_refusal_is_invalid_input_and_a_later_step_moves_a_member(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    sim, seq = reply_simulator, reply_account.sequence_id
    member = sim.add_contact("member@example.com", owner_user_id=reply_account.user_id)
    steps = [s["id"] for s in ReplyHook().list_steps(seq)]
    hook = ReplyHook()
    assert hook.add_contacts_to_sequence(seq, [member])["added"] == [member]
    refusal = {"error": "invalidInput", "errorDetails": "Contact could not be added to sequence"}
    # The same step, and a missing contact: refused alike.
    again = hook.add_contacts_to_sequence(seq, [member, 999_999], start_step_id=steps[0])
    assert again == {"added": [], "notProcessed": {str(member): refusal, "999999": refusal}}
    # A later step: "added", and the member skips the steps between.
    assert hook.add_contacts_to_sequence(seq, [member], start_step_id=steps[2])["added"] == [member]
    assert sim.moves == {(seq, member): 1}
    assert sim.readds == {(seq, member): 2}
    assert sim.enrolments == {(seq, member): 1}
    page = hook.list_sequence_contacts(seq)
    assert page["items"][0]["currentStep"] == {"stepId": steps[2], "displayName": "Step 3"}


# -- whole-request 400s and archived sequences (reply.md lines 96-98) ---------------------------


def test_a_sequence_without_steps_or_archived_is_refused_before_sending(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    empty = reply_simulator.add_sequence("Empty", owner_user_id=reply_account.user_id, steps=0)
    with pytest.raises(SyncConfigurationError, match=rf"Reply sequence {empty} \('Empty'\) has no steps"):
        ReplyAdapter(ReplyHook(), empty).preflight()
    # The server refuses it whole, with a hint.
    with pytest.raises(
        SequencesApiError, match=r"400 sequenceContact.noStepsInSequence: .*add at least one step"
    ):
        ReplyHook().add_contacts_to_sequence(empty, [1])
    archived = reply_simulator.add_sequence("Old", owner_user_id=reply_account.user_id)
    reply_simulator.archive_sequence(archived)
    with pytest.raises(SyncConfigurationError, match=rf"Reply sequence {archived} \('Old'\) is archived"):
        ReplyAdapter(ReplyHook(), archived).preflight()


@pytest.mark.reply_simulator(behaviour="observed", contact_limit=2)
def test_the_plan_limit_refuses_the_whole_request_and_later_batches_are_not_sent(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    ids = [
        reply_simulator.add_contact(f"c{i}@example.com", owner_user_id=reply_account.user_id)
        for i in range(4)
    ]
    adapter = ReplyAdapter(ReplyHook(), reply_account.sequence_id, with_contact_ids=True)
    adapter.preflight()
    first = adapter.push(
        batch({"key": "a", "id": ids[0]}, {"key": "b", "id": ids[1]}, {"key": "c", "id": ids[2]})
    )
    assert first.added == {}
    assert {k: r for k, (r, _) in first.failed.items()} == dict.fromkeys("abc", "contactLimitExceeded")
    assert "sequenceContact.contactLimitExceeded" in first.failed["a"][1]
    sent = len(reply_simulator.requests)
    later = adapter.push(batch({"key": "d", "id": ids[3]}))
    assert later.failed["d"][0] == "contactLimitExceeded"
    assert len(reply_simulator.requests) == sent
    assert reply_simulator.enrolments == {}


# -- import (reply.md lines 99-103) --------------------------------------------------------------


def test_import_needs_a_first_name_and_answers_lowercase_statuses(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    sim, user = reply_simulator, reply_account.user_id
    no_name = post(sim, reply_account, "/v3/contacts/import", {"items": [{"email": "x@example.com"}]})
    assert no_name.status_code == 400
    assert no_name.json()["errors"] == [{"pointer": "/items/0/firstName", "detail": "firstName is required"}]
    teammate = sim.add_user("teammate@example.com")
    theirs = sim.add_contact("theirs@example.com", owner_user_id=teammate)
    deleted = sim.add_contact("back@example.com", owner_user_id=user, deleted=True)
    items = [
        {"email": "new@example.com", "firstName": "New"},
        {"email": "theirs@example.com", "firstName": "T"},
        {"email": "back@example.com", "firstName": "B"},
    ]
    answer = ReplyHook().import_contacts(items)
    assert answer["items"] == [
        {"id": answer["items"][0]["id"], "status": "created", "error": None},
        {"id": theirs, "status": "skipped", "error": None, "skipReason": "contactOwnedByTeammate"},
        {"id": deleted, "status": "restored", "error": None},
    ]


def test_a_skipped_item_is_never_added_and_a_restored_one_is(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    sim, user = reply_simulator, reply_account.user_id
    teammate = sim.add_user("teammate@example.com")
    sim.add_contact("theirs@example.com", owner_user_id=teammate)
    sim.add_contact("gone@example.com", owner_user_id=teammate, deleted=True)
    restored = sim.add_contact("back@example.com", owner_user_id=user, deleted=True)
    adapter = ReplyAdapter(ReplyHook(), reply_account.sequence_id)
    adapter.preflight()
    adapter.start(fresh_state=True)
    outcome = adapter.push(
        batch(
            {"key": "theirs", "email": "theirs@example.com", "firstName": "T"},
            {"key": "gone", "email": "gone@example.com", "firstName": "G"},
            {"key": "back", "email": "back@example.com", "firstName": "B"},
        )
    )
    assert outcome.added == {"back": str(restored)}
    assert outcome.failed == {
        "theirs": ("contactSkipped", "Reply's import skipped this contact (contactOwnedByTeammate)"),
        "gone": ("contactSkipped", "Reply's import skipped this contact (contactDeleted)"),
    }
    assert sim.foreign_adds == {}
    assert sim.enrolments == {(reply_account.sequence_id, restored): 1}


@pytest.mark.reply_simulator(behaviour="observed", import_async_threshold=1)
def test_a_background_import_is_read_from_json_data_result(reply_simulator: ReplySimulator) -> None:
    items = [{"email": f"p{i}@example.com", "firstName": "P"} for i in range(3)]
    answer = ReplyHook().import_contacts(items)
    assert [item["status"] for item in answer["items"]] == ["created"] * 3
    jobs = [r.path for r in reply_simulator.requests if r.path.startswith("/v3/background-jobs/")]
    assert len(jobs) == 1


# -- identity (reply.md lines 106-109) -----------------------------------------------------------


def _connect(monkeypatch: pytest.MonkeyPatch, sim: ReplySimulator, key: str, **extra: Any) -> ReplyHook:
    monkeypatch.setenv(connection_env_var("reply_org"), connection_json("reply", sim.url, key, **extra))
    return ReplyHook("reply_org")


def test_an_organization_key_needs_an_acting_user_and_by_email_a_team(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = reply_simulator
    colleague = sim.add_user("colleague@example.com")
    sim.add_api_key("org-key", user_id=reply_account.user_id, kind="organization", members=[colleague])
    with pytest.raises(
        SequencesApiError, match=r"403 USER_REQUIRED: .*set the connection extra acting_user_id"
    ):
        _connect(monkeypatch, sim, "org-key").whoami()
    by_email = _connect(monkeypatch, sim, "org-key", acting_user_email="colleague@example.com")
    with pytest.raises(
        SequencesApiError, match=r"403 TEAM_REQUIRED: .*set the connection extra acting_team_id"
    ):
        by_email.whoami()
    with_team = _connect(
        monkeypatch, sim, "org-key", acting_user_email="colleague@example.com", acting_team_id="1"
    )
    assert with_team.whoami() == {"userId": colleague}
    assert _connect(monkeypatch, sim, "org-key", acting_user_id=str(colleague)).whoami() == {
        "userId": colleague
    }
    ok, message = by_email.test_connection()
    assert not ok
    assert "acting_team_id" in message


def test_a_key_of_several_teams_needs_a_team_and_a_missing_scope_says_so(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = reply_simulator
    sim.add_api_key("multi", user_id=reply_account.user_id, teams=[1, 2])
    with pytest.raises(SequencesApiError, match="403 TEAM_REQUIRED"):
        _connect(monkeypatch, sim, "multi").whoami()
    assert _connect(monkeypatch, sim, "multi", acting_team_id="2").whoami() == {
        "userId": reply_account.user_id
    }
    sim.add_api_key("read-only", user_id=reply_account.user_id, scopes={"sequences:read"})
    with pytest.raises(
        SequencesApiError, match=r"403 insufficient_scope: .*lacks the scope 'contacts:write'.*grant it"
    ):
        _connect(monkeypatch, sim, "read-only").import_contacts(
            [{"email": "a@example.com", "firstName": "A"}]
        )


# -- the sequence's contacts (reply.md lines 110-111) -------------------------------------------


def test_the_sequence_is_read_whole_whatever_the_page_size_and_a_missing_one_is_empty(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount
) -> None:
    sim, seq = reply_simulator, reply_account.sequence_id
    ids = [sim.add_contact(f"m{i}@example.com", owner_user_id=reply_account.user_id) for i in range(250)]
    hook = ReplyHook()
    for start in range(0, 250, 100):
        hook.add_contacts_to_sequence(seq, ids[start : start + 100])
    adapter = ReplyAdapter(hook, seq, enrolment=ReplyEnrolment())
    assert len(adapter.members()) == 250
    assert adapter.in_sequence([*ids, 987_654_321]) == set(ids)
    pages = [r for r in sim.requests if r.path == f"/v3/sequences/{seq}/contacts"]
    assert len(pages) == 3  # 100 a page, whatever top asked for
    assert hook.list_sequence_contacts(987_654) == {"items": [], "hasMore": False}
