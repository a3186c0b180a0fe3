"""ReplyHook: every endpoint method, over real HTTP to the Reply simulator."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.testing import connection_env_var, connection_json

pytestmark = pytest.mark.usefixtures("reply_connection")


@pytest.fixture
def hook() -> ReplyHook:
    return ReplyHook()


def test_whoami(hook: ReplyHook, reply_account) -> None:
    assert hook.whoami() == {"userId": reply_account.user_id}


def test_acting_user_from_the_connection(reply_simulator, reply_account, monkeypatch) -> None:
    colleague = reply_simulator.add_user("colleague@example.com")
    org_key = "org-key"
    reply_simulator.add_api_key(
        org_key, user_id=reply_account.user_id, kind="organization", members=[colleague]
    )
    monkeypatch.setenv(
        connection_env_var("reply_org"),
        connection_json("reply", reply_simulator.url, org_key, acting_user_id=str(colleague)),
    )
    assert ReplyHook("reply_org").whoami() == {"userId": colleague}
    monkeypatch.setenv(
        connection_env_var("reply_org"),
        connection_json("reply", reply_simulator.url, org_key, acting_user_email="colleague@example.com"),
    )
    assert ReplyHook("reply_org").whoami() == {"userId": colleague}


def test_list_sequences_reads_every_page(hook: ReplyHook, reply_simulator, reply_account) -> None:
    for i in range(4):
        reply_simulator.add_sequence(f"Campaign {i}", owner_user_id=reply_account.user_id, status="paused")
    names = [s["name"] for s in hook.list_sequences(page_size=2)]
    assert names == ["Nightly onboarding", "Campaign 0", "Campaign 1", "Campaign 2", "Campaign 3"]
    assert [r.path for r in reply_simulator.requests].count("/v3/sequences") == 3
    assert [s["name"] for s in hook.list_sequences(status="active")] == ["Nightly onboarding"]
    assert [s["name"] for s in hook.list_sequences(name="Campaign 2")] == ["Campaign 2"]


def test_get_sequence_and_steps(hook: ReplyHook, reply_account) -> None:
    sequence = hook.get_sequence(reply_account.sequence_id)
    assert sequence["name"] == "Nightly onboarding"
    steps = hook.list_steps(reply_account.sequence_id)
    assert len(steps) == 3
    assert [s["id"] for s in sequence["steps"]] == [s["id"] for s in steps]


def test_unknown_sequence_is_a_404_with_the_service_code(hook: ReplyHook) -> None:
    with pytest.raises(SequencesApiError) as caught:
        hook.get_sequence(999)
    assert caught.value.status == 404
    assert caught.value.code == "sequence.notFound"
    assert "Reply.io API GET /v3/sequences/999 failed: 404 sequence.notFound" in str(caught.value)


def test_import_contacts_creates_then_matches_by_email(hook: ReplyHook, reply_simulator) -> None:
    first = hook.import_contacts(
        [
            {"email": "ada@example.com", "firstName": "Ada", "company": "Analytical"},
            {
                "email": "grace@example.com",
                "firstName": "Grace",
                "customFields": [{"name": "tier", "value": "A"}],
            },
        ]
    )
    assert [item["status"] for item in first["items"]] == ["Created", "Created"]
    again = hook.import_contacts([{"email": "ADA@example.com", "title": "Countess"}], overwrite_existing=True)
    assert again["items"][0]["id"] == first["items"][0]["id"]
    assert again["items"][0]["status"] == "Updated"
    stored = reply_simulator.contact(first["items"][0]["id"])
    assert stored["title"] == "Countess"
    assert stored["company"] == "Analytical"
    skipped = hook.import_contacts([{"email": "grace@example.com"}], skip_existing=True)
    assert skipped["items"][0]["status"] == "Skipped"


def test_import_with_one_bad_email_is_refused_whole_and_not_retried(hook: ReplyHook, reply_simulator) -> None:
    with pytest.raises(SequencesApiError) as caught:
        hook.import_contacts([{"email": "ok@example.com"}, {"email": "not-an-email"}])
    assert caught.value.status == 400
    assert caught.value.rejects_request
    assert caught.value.errors[0]["field"] == "items[1].email"
    assert [r.status for r in reply_simulator.requests] == [400]  # one attempt, no retry
    assert reply_simulator.contact_by_email("ok@example.com") is None


@pytest.mark.reply_simulator(import_async_threshold=2)
def test_large_import_runs_as_a_background_job(hook: ReplyHook, monkeypatch) -> None:
    monkeypatch.setattr("airflow_provider_sequences.hooks.reply.time.sleep", lambda _s: None)
    result = hook.import_contacts([{"email": f"p{i}@example.com"} for i in range(3)])
    assert result["added"] == 3
    assert [item["status"] for item in result["items"]] == ["Created"] * 3


def test_find_contact_by_email(hook: ReplyHook, reply_simulator, reply_account) -> None:
    contact_id = reply_simulator.add_contact("linus@example.com", owner_user_id=reply_account.user_id)
    found = hook.find_contact_by_email("linus@example.com")
    assert found is not None
    assert found["id"] == contact_id
    assert hook.find_contact_by_email("nobody@example.com") is None


def test_bulk_add_sends_every_seed_field(hook: ReplyHook, reply_simulator, reply_account) -> None:
    other = reply_simulator.add_sequence("Older", owner_user_id=reply_account.user_id)
    ids = [
        item["id"]
        for item in hook.import_contacts([{"email": f"c{i}@example.com"} for i in range(3)])["items"]
    ]
    hook.add_contacts_to_sequence(other, ids[:1])
    step = hook.list_steps(reply_account.sequence_id)[1]["id"]
    start = datetime.now(timezone.utc) + timedelta(days=1)
    answer = hook.add_contacts_to_sequence(
        reply_account.sequence_id,
        [*ids, 424242],
        remove_from_existing=True,
        start_step_id=step,
        ignore_step_delay=True,
        start_from=start,
    )
    assert sorted(answer["added"]) == sorted(ids)
    assert answer["notProcessed"]["424242"]["error"] == "contactNotFound"
    enrolled = {c["contactId"]: c for c in reply_simulator.sequence_contacts(reply_account.sequence_id)}
    assert set(enrolled) == set(ids)
    assert {c["currentStep"] for c in enrolled.values()} == {step}
    assert {c["ignoreStepDelay"] for c in enrolled.values()} == {True}
    assert all(c["startFrom"] for c in enrolled.values())
    assert reply_simulator.sequence_contacts(other) == []  # removeFromExisting took it out


def test_bulk_add_reports_per_item_slugs(hook: ReplyHook, reply_simulator, reply_account) -> None:
    stranger = reply_simulator.add_user("stranger@example.com")
    theirs = reply_simulator.add_contact("theirs@example.com", owner_user_id=stranger)
    mine = reply_simulator.add_contact("mine@example.com", owner_user_id=reply_account.user_id)
    hook.add_contacts_to_sequence(reply_account.sequence_id, [mine])
    answer = hook.add_contacts_to_sequence(reply_account.sequence_id, [mine, theirs])
    assert answer["added"] == []
    assert answer["notProcessed"][str(mine)]["error"] == "contactAlreadyInSequence"
    assert answer["notProcessed"][str(theirs)]["error"] == "forbidden"


def test_bulk_add_validation_error_is_not_retried(hook: ReplyHook, reply_simulator, reply_account) -> None:
    before = len(reply_simulator.requests)
    with pytest.raises(SequencesApiError) as caught:
        hook.add_contacts_to_sequence(reply_account.sequence_id, [1], start_step_id=7)
    assert caught.value.status == 400
    assert caught.value.errors[0]["field"] == "startStepId"
    assert len(reply_simulator.requests) == before + 1


def test_sequence_contacts_one_page_and_all(hook: ReplyHook, reply_account) -> None:
    ids = [
        item["id"]
        for item in hook.import_contacts([{"email": f"s{i}@example.com"} for i in range(5)])["items"]
    ]
    hook.add_contacts_to_sequence(reply_account.sequence_id, ids)
    page = hook.list_sequence_contacts(reply_account.sequence_id, top=2, skip=0)
    assert len(page["items"]) == 2
    assert page["hasMore"] is True
    everyone = list(hook.iter_sequence_contacts(reply_account.sequence_id, page_size=2))
    assert sorted(c["contactId"] for c in everyone) == sorted(ids)
    assert {c["statusInSequence"] for c in everyone} == {"active"}


def test_bulk_remove(hook: ReplyHook, reply_simulator, reply_account) -> None:
    ids = [
        item["id"]
        for item in hook.import_contacts([{"email": f"r{i}@example.com"} for i in range(3)])["items"]
    ]
    hook.add_contacts_to_sequence(reply_account.sequence_id, ids[:2])
    answer = hook.remove_contacts_from_sequence(reply_account.sequence_id, [*ids, 424242])
    assert answer["requested"] == 4
    assert answer["removed"] == 2
    assert answer["notInSequence"] == 1
    assert answer["notFound"] == 1
    assert sorted(answer["removedIds"]) == sorted(ids[:2])
    assert reply_simulator.sequence_contacts(reply_account.sequence_id) == []
