"""WhippyHook: every endpoint method, over real HTTP to the Whippy simulator."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.whippy import WhippyHook

pytestmark = pytest.mark.usefixtures("whippy_connection")


@pytest.fixture
def hook() -> WhippyHook:
    return WhippyHook()


def test_list_and_iterate_sequences(hook: WhippyHook, whippy_simulator) -> None:
    for i in range(3):
        whippy_simulator.add_sequence(f"Campaign {i}")
    page = hook.list_sequences(limit=2, offset=0)
    assert page["total"] == 5
    assert len(page["data"]) == 2
    assert len(list(hook.iter_sequences())) == 5
    assert [s["title"] for s in hook.iter_sequences(title="campaign 1")] == ["Campaign 1"]


def test_get_sequence_has_its_steps(hook: WhippyHook, whippy_account) -> None:
    sequence = hook.get_sequence(whippy_account.sequence_id)
    assert sequence["title"] == "Nightly onboarding (SMS)"
    assert [step["channel_type"] for step in sequence["steps"]] == ["sms", "sms"]


def test_unknown_sequence_is_a_404(hook: WhippyHook) -> None:
    with pytest.raises(SequencesApiError) as caught:
        hook.get_sequence("00000000-0000-0000-0000-000000000000")
    assert caught.value.status == 404
    assert "Whippy API GET /v1/sequences/00000000-0000-0000-0000-000000000000 failed: 404" in str(
        caught.value
    )


def test_list_channels(hook: WhippyHook, whippy_account) -> None:
    channels = hook.list_channels()
    assert channels["total"] == 1
    assert channels["data"][0]["phone"] == whippy_account.channel_phone


def test_create_sequence_contacts_sends_every_seed_field(
    hook: WhippyHook, whippy_simulator, whippy_account
) -> None:
    custom_object = whippy_simulator.add_custom_object("crm_deal", ["plan", "owner"])
    step = hook.get_sequence(whippy_account.sequence_id)["steps"][1]["id"]
    schedule_at = datetime.now(timezone.utc) + timedelta(hours=2)
    to = [
        {
            "phone": "+14155550101",
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "external_id": "crm-1",
            "language": "en",
            "default_channel_id": "2f1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b",
            "address": {
                "address_line_one": "12 St James's Square",
                "address_line_two": "Flat 2",
                "city": "London",
                "state": "London",
                "country": "GB",
                "post_code": "SW1Y 4JH",
            },
            "birth_date": {"day": 10, "month": 12, "year": 1815},
            "properties": {"plan": "enterprise", "owner": "grace"},
        },
        {"phone": "+14155550102", "name": "Grace Hopper", "properties": {"plan": "team"}},
    ]
    answer = hook.create_sequence_contacts(
        whippy_account.sequence_id,
        to,
        from_=whippy_account.channel_phone,
        step_id=step,
        schedule_at=schedule_at,
        custom_data={"custom_object_id": custom_object, "resource": "contact"},
        voice_options={"call_flow_id": "flow-1"},
    )
    assert answer == {"data": {"status": "accepted"}}
    whippy_simulator.wait_idle()
    ada = whippy_simulator.contact_by(external_id="crm-1")
    assert ada["email"] == "ada@example.com"
    assert ada["language"] == "en"
    assert ada["address"]["post_code"] == "SW1Y 4JH"
    assert ada["birth_date"] == {"day": 10, "month": 12, "year": 1815}
    assert ada["default_channel_id"] == "2f1d3c4b-5a69-4788-9a0b-1c2d3e4f5a6b"
    assert ada["custom_data"] == {"crm_deal": {"plan": "enterprise", "owner": "grace"}}
    records = whippy_simulator.sequence_step_contacts(whippy_account.sequence_id)
    assert {r.voice_options["call_flow_id"] for r in records} == {"flow-1"}
    assert {r.from_ for r in records} == {whippy_account.channel_phone}
    step_contacts = whippy_simulator.step_contacts(whippy_account.sequence_id)
    assert {sc["step_id"] for sc in step_contacts} == {step}
    assert {sc["status"] for sc in step_contacts} == {"pending"}  # scheduled in the future
    assert len(whippy_simulator.upload_tags) == 1  # more than one contact in `to`
    body = [r for r in whippy_simulator.requests if r.method == "POST"]
    assert [(r.status, r.items) for r in body] == [(202, 2)]


def test_create_sequence_contacts_validation_error_names_the_field(hook: WhippyHook, whippy_account) -> None:
    with pytest.raises(SequencesApiError) as caught:
        hook.create_sequence_contacts(
            whippy_account.sequence_id, [{"phone": "+14155550101", "name": "x" * 256}]
        )
    assert caught.value.status == 422
    assert caught.value.rejects_request
    assert caught.value.errors[0]["field"] == "to[0].name"


def test_draft_sequence_refuses_contacts(hook: WhippyHook, whippy_simulator) -> None:
    draft = whippy_simulator.add_sequence("Not ready", status="draft")
    with pytest.raises(SequencesApiError, match="draft"):
        hook.create_sequence_contacts(draft, [{"phone": "+14155550101"}])


def test_list_sequence_contacts_with_filters(hook: WhippyHook, whippy_simulator, whippy_account) -> None:
    steps = [s["id"] for s in hook.get_sequence(whippy_account.sequence_id)["steps"]]
    hook.create_sequence_contacts(
        whippy_account.sequence_id, [{"phone": f"+1415555020{i}"} for i in range(3)], step_id=steps[0]
    )
    hook.create_sequence_contacts(whippy_account.sequence_id, [{"phone": "+14155550299"}], step_id=steps[1])
    whippy_simulator.wait_idle()
    everyone = hook.list_sequence_contacts(whippy_account.sequence_id)
    assert everyone["total"] == 4
    first_step = hook.list_sequence_contacts(whippy_account.sequence_id, step_ids=[steps[0]], limit=2)
    assert first_step["total"] == 3
    assert len(first_step["data"]) == 2
    second = whippy_simulator.contact_by(phone="+14155550299")
    whippy_simulator.set_step_contact_status(whippy_account.sequence_id, second["id"], "complete")
    done = hook.list_sequence_contacts(whippy_account.sequence_id, status="complete")
    assert [item["contact"]["phone"] for item in done["data"]] == ["+14155550299"]
    paged = list(hook.iter_sequence_contacts(whippy_account.sequence_id, step_ids=[steps[0]]))
    assert sorted(item["contact"]["phone"] for item in paged) == [f"+1415555020{i}" for i in range(3)]
