"""The Whippy simulator over real HTTP: every behaviour of the contract it simulates."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from airflow_provider_sequences.testing.faults import RequestRecord
from airflow_provider_sequences.testing.whippy import WhippySimulator

KEY = "test-whippy-key"
CHANNEL_PHONE = "+15555550100"
RATE_HEADER = "X-RateLimit-Remaining-Interval-Milliseconds"


class Api:
    """A client for the simulator: one session, the key in ``X-WHIPPY-KEY``."""

    def __init__(self, sim: WhippySimulator, key: str = KEY) -> None:
        self.sim = sim
        self.session = requests.Session()
        self.session.headers["X-WHIPPY-KEY"] = key

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.sim.url + path, params=params, timeout=10)

    def post(self, path: str, body: Any = None) -> requests.Response:
        return self.session.post(self.sim.url + path, json=body, timeout=10)

    def enrol(self, sequence_id: str, to: list[dict[str, Any]], **extra: Any) -> requests.Response:
        return self.post(f"/v1/sequences/{sequence_id}/contacts", {"to": to, **extra})


@pytest.fixture
def make_sim() -> Iterator[Callable[..., WhippySimulator]]:
    """Start simulators with the given options (and a key and a channel); stop them all after."""
    started: list[WhippySimulator] = []

    def make(**options: Any) -> WhippySimulator:
        sim = WhippySimulator(**options).start()
        started.append(sim)
        sim.add_api_key(KEY)
        sim.add_channel(phone=CHANNEL_PHONE, name="Sales line")
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., WhippySimulator]) -> WhippySimulator:
    return make_sim(enforce_rate_limits=False)


@pytest.fixture
def api(sim: WhippySimulator) -> Api:
    return Api(sim)


def errors_of(response: requests.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["status"] == response.status_code
    assert "detail" not in body
    errors: list[dict[str, Any]] = body["errors"]
    return errors


def fields_of(response: requests.Response) -> list[str | None]:
    return [error.get("field") for error in errors_of(response)]


def logged(sim: WhippySimulator, count: int) -> list[RequestRecord]:
    """The request log once it holds ``count`` records.

    The log records a request after its response went out, so the client can be a moment ahead.
    """
    deadline = time.monotonic() + 5
    while len(sim.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return sim.requests


def first_step(sim: WhippySimulator, sequence_id: str) -> str:
    step_id: str = sim.sequence(sequence_id)["steps"][0]["id"]
    return step_id


# -- authentication and errors -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-WHIPPY-KEY": "not-a-key"}])
def test_missing_or_unknown_key_is_401(sim: WhippySimulator, headers: dict[str, str]) -> None:
    response = requests.get(f"{sim.url}/v1/sequences", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"errors": [{"description": "Not authenticated"}], "status": 401}


def test_unknown_route_and_method_answer_whippy_errors(api: Api) -> None:
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"errors": [{"description": "Not Found"}], "status": 404}
    response = api.session.delete(api.sim.url + "/v1/channels", timeout=10)
    assert response.status_code == 405
    assert errors_of(response) == [{"description": "Method Not Allowed"}]


def test_malformed_json_is_400(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    response = api.session.post(
        f"{sim.url}/v1/sequences/{sequence_id}/contacts",
        data="{not json",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    assert errors_of(response) == [{"description": "malformed JSON body"}]


# -- POST /v1/sequences/{id}/contacts: validation -----------------------------------------------

LONG = "x" * 256


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": []}, "to"),
        ({"to": [{"phone": f"+1555555{n:04d}"} for n in range(4001)]}, "to"),
        ({"to": None}, "to"),
        ({"to": [{"phone": "+15555550001"}] * 3 + [{"email": "d@example.com"}]}, "to[3].phone"),
        ({"to": [{"phone": ""}]}, "to[0].phone"),
        ({"to": [{"phone": 15555550001}]}, "to[0].phone"),
        ({"to": [{"phone": "+15555550001", "email": LONG[:-12] + "@example.com"}]}, "to[0].email"),
        ({"to": [{"phone": "+15555550001", "name": LONG}]}, "to[0].name"),
        ({"to": [{"phone": "+15555550001", "default_channel_id": "nope"}]}, "to[0].default_channel_id"),
        ({"to": [{"phone": "+15555550001", "birth_date": {"day": "1"}}]}, "to[0].birth_date.day"),
        ({"to": [{"phone": "+15555550001", "address": {"city": 5}}]}, "to[0].address.city"),
        ({"to": [{"phone": "+15555550001", "properties": []}]}, "to[0].properties"),
        ({"to": [{"phone": "+15555550001"}], "from": "+19999999999"}, "from"),
        ({"to": [{"phone": "+15555550001"}], "step_id": "not-a-step"}, "step_id"),
        ({"to": [{"phone": "+15555550001"}], "schedule_at": "tomorrow"}, "schedule_at"),
        ({"to": [{"phone": "+15555550001"}], "schedule_at": "2026-01-01"}, "schedule_at"),
        ({"to": [{"phone": "+15555550001"}], "schedule_at": "2026-13-01T00:00:00Z"}, "schedule_at"),
        (
            {
                "to": [{"phone": "+15555550001"}],
                "custom_data": {"custom_object_id": "missing", "resource": "contact"},
            },
            "custom_data.custom_object_id",
        ),
        ({"to": [{"phone": "+15555550001"}], "voice_options": "flow-1"}, "voice_options"),
    ],
)
def test_invalid_bodies_are_422_with_the_field(
    sim: WhippySimulator, api: Api, body: dict[str, Any], field: str
) -> None:
    sequence_id = sim.add_sequence("Welcome")
    response = api.post(f"/v1/sequences/{sequence_id}/contacts", body)
    assert response.status_code == 422
    assert fields_of(response) == [field]
    sim.wait_idle()
    assert sim.contacts == []
    assert sim.enrolments == {}


def test_422_descriptions_for_length_and_blank(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    response = api.enrol(sequence_id, [{"phone": "", "name": LONG}, {"phone": "+15555550001"}])
    assert response.status_code == 422
    assert errors_of(response) == [
        {"description": "can't be blank", "field": "to[0].phone"},
        {"description": "should be at most 255 character(s)", "field": "to[0].name"},
    ]


def test_email_and_name_of_255_characters_are_accepted(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    email = "x" * 243 + "@example.com"
    assert len(email) == 255
    response = api.enrol(sequence_id, [{"phone": "+15555550001", "email": email, "name": "n" * 255}])
    assert response.status_code == 202


def test_custom_object_must_exist_and_resource_must_be_known(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    object_id = sim.add_custom_object("subscription", ["plan"])
    item = {"phone": "+15555550001", "properties": {"plan": "pro"}}
    bad_resource = api.enrol(
        sequence_id, [item], custom_data={"custom_object_id": object_id, "resource": "x"}
    )
    assert bad_resource.status_code == 422
    assert fields_of(bad_resource) == ["custom_data.resource"]
    other_org = sim.add_custom_object("subscription", ["plan"], organization_id="org-2")
    foreign = api.enrol(
        sequence_id, [item], custom_data={"custom_object_id": other_org, "resource": "contact"}
    )
    assert fields_of(foreign) == ["custom_data.custom_object_id"]
    unknown_property = api.enrol(
        sequence_id,
        [{"phone": "+15555550001", "properties": {"colour": "red"}}],
        custom_data={"custom_object_id": object_id, "resource": "contact"},
    )
    assert fields_of(unknown_property) == ["to[0].properties.colour"]


def test_custom_data_is_stored_on_the_contact_or_the_step_contact(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    object_id = sim.add_custom_object("subscription", ["plan"])
    for phone, resource in (("+15555550001", "contact"), ("+15555550002", "step_contact")):
        response = api.enrol(
            sequence_id,
            [{"phone": phone, "properties": {"plan": "pro"}}],
            custom_data={"custom_object_id": object_id, "resource": resource},
        )
        assert response.status_code == 202
    sim.wait_idle()
    on_contact = sim.contact_by(phone="+15555550001")
    on_step = sim.contact_by(phone="+15555550002")
    assert on_contact is not None
    assert on_step is not None
    assert on_contact["custom_data"] == {"subscription": {"plan": "pro"}}
    assert on_step["custom_data"] == {}
    assert len(sim.step_contacts(sequence_id)) == 2


def test_unknown_sequence_is_404(sim: WhippySimulator, api: Api) -> None:
    response = api.enrol("00000000-0000-0000-0000-000000000000", [{"phone": "+15555550001"}])
    assert response.status_code == 404
    assert response.json() == {"errors": [{"description": "Sequence not found"}], "status": 404}
    other_org = sim.add_sequence("Theirs", organization_id="org-2")
    assert api.enrol(other_org, [{"phone": "+15555550001"}]).status_code == 404
    assert api.get(f"/v1/sequences/{other_org}").status_code == 404
    assert api.get(f"/v1/sequences/{other_org}/contacts").status_code == 404


def test_draft_sequence_accepts_no_contacts(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Not ready", status="draft")
    response = api.enrol(sequence_id, [{"phone": "+15555550001"}])
    assert response.status_code == 422
    assert errors_of(response) == [{"description": "sequence is a draft and accepts no contacts"}]


# -- POST /v1/sequences/{id}/contacts: background work ------------------------------------------


def test_202_then_the_work_happens_in_the_background(make_sim: Callable[..., WhippySimulator]) -> None:
    sim = make_sim(enforce_rate_limits=False, processing_delay=0.3)
    api = Api(sim)
    sequence_id = sim.add_sequence("Welcome")
    response = api.enrol(sequence_id, [{"phone": "+15555550001"}], **{"from": CHANNEL_PHONE})
    assert response.status_code == 202
    assert response.json() == {"data": {"status": "accepted"}}
    assert sim.contacts == []
    assert sim.step_contacts(sequence_id) == []
    assert api.get(f"/v1/sequences/{sequence_id}/contacts").json() == {"data": [], "total": 0}
    sim.wait_idle()
    listed = api.get(f"/v1/sequences/{sequence_id}/contacts").json()
    assert listed["total"] == 1
    assert listed["data"][0]["contact"]["phone"] == "+15555550001"
    assert listed["data"][0]["status"] == "active"
    assert listed["data"][0]["step_id"] == first_step(sim, sequence_id)


def test_wait_idle_times_out_while_a_job_is_pending(make_sim: Callable[..., WhippySimulator]) -> None:
    sim = make_sim(enforce_rate_limits=False, processing_delay=1.0)
    sequence_id = sim.add_sequence("Welcome")
    assert Api(sim).enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202
    with pytest.raises(TimeoutError):
        sim.wait_idle(timeout=0.05)
    sim.wait_idle()
    assert len(sim.step_contacts(sequence_id)) == 1


def test_new_contacts_store_every_field(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    item = {
        "phone": "+15555550001",
        "email": "jane@example.com",
        "name": "Jane Doe",
        "external_id": "crm-1",
        "language": "en",
        "default_channel_id": "5b0c6a59-6a3b-4c55-9d67-1f4a3c0c0b0e",
        "address": {"address_line_one": "1 Main St", "city": "Springfield", "country": "US"},
        "birth_date": {"day": 1, "month": 2, "year": 1990},
        "properties": {"plan": "pro"},
    }
    assert api.enrol(sequence_id, [item], voice_options={"call_flow_id": "f1"}).status_code == 202
    sim.wait_idle()
    (contact,) = sim.contacts
    for name, value in item.items():
        assert contact[name] == value, name
    assert contact["organization_id"] == "org-1"


def test_existing_contacts_are_matched_by_phone_email_or_external_id(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    by_phone = sim.add_contact(phone="+15555550001")
    by_email = sim.add_contact(phone="+15555550002", email="bo@example.com")
    by_external = sim.add_contact(phone="+15555550003", external_id="crm-3")
    response = api.enrol(
        sequence_id,
        [
            {"phone": "+15555550001", "name": "Al"},
            {"phone": "+15555550022", "email": "BO@example.com"},
            {"phone": "+15555550033", "external_id": "crm-3"},
            {"phone": "+15555550004"},
        ],
    )
    assert response.status_code == 202
    sim.wait_idle()
    assert len(sim.contacts) == 4
    enrolled = {record["contact"]["id"] for record in sim.step_contacts(sequence_id)}
    created = sim.contact_by(phone="+15555550004")
    assert created is not None
    assert enrolled == {by_phone, by_email, by_external, created["id"]}
    assert sim.enrolments == {(sequence_id, cid): 1 for cid in enrolled}
    matched = sim.contact_by(phone="+15555550001")
    assert matched is not None
    assert matched["name"] == "Al"


def test_contacts_are_per_organization(sim: WhippySimulator, api: Api) -> None:
    sim.add_api_key("other-key", organization_id="org-2")
    theirs = sim.add_sequence("Theirs", organization_id="org-2")
    sim.add_contact(phone="+15555550001")
    assert Api(sim, "other-key").enrol(theirs, [{"phone": "+15555550001"}]).status_code == 202
    sim.wait_idle()
    assert sorted(contact["organization_id"] for contact in sim.contacts) == ["org-1", "org-2"]


def test_upload_tag_only_when_more_than_one_contact(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202
    sim.wait_idle()
    assert sim.upload_tags == []
    before = datetime.now(timezone.utc)
    assert api.enrol(sequence_id, [{"phone": "+15555550002"}, {"phone": "+15555550003"}]).status_code == 202
    sim.wait_idle()
    (tag,) = sim.upload_tags
    ids = [sim.contact_by(phone=phone)["id"] for phone in ("+15555550002", "+15555550003")]  # type: ignore[index]
    assert tag["contact_ids"] == ids
    requested_at = datetime.fromisoformat(tag["requested_at"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= requested_at <= datetime.now(timezone.utc)


def test_contact_already_in_the_step_is_reprocessed(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome", steps=["sms", "sms"])
    for _ in range(2):
        assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202
    sim.wait_idle()
    contact = sim.contact_by(phone="+15555550001")
    assert contact is not None
    assert sim.enrolments == {(sequence_id, contact["id"]): 2}
    assert len(sim.step_contacts(sequence_id)) == 1
    assert sim.ignored == []


def test_contact_active_in_another_step_is_ignored(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome", steps=["sms", "sms"])
    second = sim.sequence(sequence_id)["steps"][1]["id"]
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}], step_id=second).status_code == 202
    sim.wait_idle()
    (record,) = sim.step_contacts(sequence_id)
    assert record["step_id"] == first_step(sim, sequence_id)
    assert sim.enrolments == {(sequence_id, record["contact"]["id"]): 1}
    (ignored,) = sim.ignored
    assert ignored["reason"] == "active or pending in another step of the sequence"
    assert ignored["step_id"] == second


@pytest.mark.parametrize(("re_add", "expected"), [(False, 1), (True, 2)])
def test_finished_contact_is_added_again_only_with_re_add(
    sim: WhippySimulator, api: Api, re_add: bool, expected: int
) -> None:
    sequence_id = sim.add_sequence("Welcome", re_add=re_add)
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202
    sim.wait_idle()
    contact_id = sim.step_contacts(sequence_id)[0]["contact"]["id"]
    sim.set_step_contact_status(sequence_id, contact_id, "complete")
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202
    sim.wait_idle()
    assert sim.enrolments == {(sequence_id, contact_id): expected}
    statuses = [record["status"] for record in sim.step_contacts(sequence_id)]
    assert statuses == (["complete", "active"] if re_add else ["complete"])
    assert len(sim.ignored) == (0 if re_add else 1)


def test_email_step_silently_ignores_missing_and_invalid_emails(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Newsletter", steps=["email"])
    response = api.enrol(
        sequence_id,
        [
            {"phone": "+15555550001"},
            {"phone": "+15555550002", "email": "not-an-email"},
            {"phone": "+15555550003", "email": "ok@example.com"},
        ],
    )
    assert response.status_code == 202
    sim.wait_idle()
    listed = api.get(f"/v1/sequences/{sequence_id}/contacts").json()
    assert [record["contact"]["email"] for record in listed["data"]] == ["ok@example.com"]
    assert listed["total"] == 1
    assert [entry["reason"] for entry in sim.ignored] == [
        "email step: the contact has no email",
        "email step: the contact's email is invalid",
    ]
    assert len(sim.contacts) == 3  # the contacts exist; only their enrolment was skipped


def test_sms_step_silently_ignores_phones_not_in_e164(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Texts")
    assert api.enrol(sequence_id, [{"phone": "555-0123"}, {"phone": "+15555550123"}]).status_code == 202
    sim.wait_idle()
    assert [r["contact"]["phone"] for r in sim.step_contacts(sequence_id)] == ["+15555550123"]
    assert [entry["phone"] for entry in sim.ignored] == ["555-0123"]


def test_schedule_at_in_the_future_makes_pending(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    future, past = "2999-01-01T15:00:00Z", "2001-01-01T15:00:00+00:00"
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}], schedule_at=future).status_code == 202
    assert api.enrol(sequence_id, [{"phone": "+15555550002"}], schedule_at=past).status_code == 202
    sim.wait_idle()
    records = sim.step_contacts(sequence_id)
    assert [(r["status"], r["scheduled_at"]) for r in records] == [
        ("pending", "2999-01-01T15:00:00Z"),
        ("active", "2001-01-01T15:00:00Z"),
    ]


# -- reading back ---------------------------------------------------------------------------------


def test_list_filters_by_status_and_step_ids_and_paginates(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome", steps=["sms", "sms"])
    first, second = (step["id"] for step in sim.sequence(sequence_id)["steps"])
    phones = [f"+1555555000{n}" for n in range(5)]
    assert api.enrol(sequence_id, [{"phone": p} for p in phones[:3]]).status_code == 202
    assert api.enrol(sequence_id, [{"phone": p} for p in phones[3:]], step_id=second).status_code == 202
    sim.wait_idle()
    done = sim.contact_by(phone=phones[0])
    assert done is not None
    sim.set_step_contact_status(sequence_id, done["id"], "complete")
    path = f"/v1/sequences/{sequence_id}/contacts"

    def phones_of(**params: Any) -> tuple[list[str], int]:
        body = api.get(path, **params).json()
        return [record["contact"]["phone"] for record in body["data"]], body["total"]

    assert phones_of(status="complete") == ([phones[0]], 1)
    assert phones_of(status="active") == (phones[1:], 4)
    assert phones_of(step_ids=second) == (phones[3:], 2)
    assert phones_of(step_ids=f"{first},{second}") == (phones, 5)
    assert phones_of(step_ids=[first, second], status="active") == (phones[1:], 4)
    assert phones_of(limit=2, offset=1) == (phones[1:3], 5)
    assert phones_of(offset=5) == ([], 5)
    item = api.get(path, limit=1).json()["data"][0]
    assert set(item) >= {"id", "status", "step_id", "sequence_id", "scheduled_at", "contact"}
    assert set(item["contact"]) == {"id", "name", "email", "phone", "external_id"}


def test_list_views_follow_new_step_contacts_and_status_changes(sim: WhippySimulator, api: Api) -> None:
    """The list's indexes (per step, per filter) give the answers a plain filter gives, as jobs
    add step contacts and statuses change between pages."""
    sequence_id = sim.add_sequence("Welcome", steps=["sms", "sms"])
    first, second = (step["id"] for step in sim.sequence(sequence_id)["steps"])
    path = f"/v1/sequences/{sequence_id}/contacts"
    filters: list[dict[str, Any]] = [
        {},
        {"step_ids": first},
        {"step_ids": f"{first},{second}"},
        {"status": "active"},
        {"status": "complete", "step_ids": first},
        {"status": "active", "step_ids": f"{second},{first}"},
    ]

    def check() -> None:
        everything = sim.step_contacts(sequence_id)
        for params in filters:
            steps = set(params.get("step_ids", "").split(",")) - {""}
            wanted = [
                item["id"]
                for item in everything
                if (not steps or item["step_id"] in steps) and params.get("status") in (None, item["status"])
            ]
            got: list[str] = []
            for offset in range(0, len(wanted) + 3, 3):
                body = api.get(path, limit=3, offset=offset, **params).json()
                assert body["total"] == len(wanted), params
                got += [item["id"] for item in body["data"]]
            assert got == wanted, params

    for round_ in range(3):
        # Views exist (built by the reads) when the next jobs add to them and change statuses.
        check()
        phones = [f"+1555555{round_}{n:03d}" for n in range(7)]
        assert api.enrol(sequence_id, [{"phone": p} for p in phones[:4]]).status_code == 202
        assert api.enrol(sequence_id, [{"phone": p} for p in phones[4:]], step_id=second).status_code == 202
        sim.wait_idle()
        check()
        done = sim.contact_by(phone=phones[1])
        assert done is not None
        sim.set_step_contact_status(sequence_id, done["id"], "complete")
        check()
    # An active contact sent again is reprocessed: its step contact changes, no new one.
    assert api.enrol(sequence_id, [{"phone": "+15555550000"}]).status_code == 202
    sim.wait_idle()
    check()


def test_a_page_of_a_large_step_costs_what_a_page_of_a_small_one_costs(
    sim: WhippySimulator, api: Api
) -> None:
    """Paging is O(page), not O(step contacts): the bench reads steps of a million contacts."""
    steps: dict[str, tuple[str, str]] = {}
    for title, size in (("Small", 1000), ("Big", 100_000)):
        sequence_id = sim.add_sequence(title, steps=["sms", "sms"])
        first, second = (step["id"] for step in sim.sequence(sequence_id)["steps"])
        steps[title] = (sequence_id, first)
        for start in range(0, size, 4000):
            to = [{"phone": f"+1{len(title)}{n:08d}"} for n in range(start, min(start + 4000, size))]
            step = first if start % 8000 == 0 else second
            assert api.enrol(sequence_id, to, step_id=step).status_code == 202
    sim.wait_idle(timeout=120)

    def timed(title: str, **params: Any) -> float:
        sequence_id, first = steps[title]
        params = {key: first if value == "first" else value for key, value in params.items()}
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            answer = api.get(f"/v1/sequences/{sequence_id}/contacts", limit=500, **params)
            best = min(best, time.perf_counter() - started)
            assert answer.status_code == 200
            assert len(answer.json()["data"]) == 500
        return best

    for params in ({"step_ids": "first", "offset": 0}, {"offset": 500}, {"status": "active", "offset": 0}):
        small, big = timed("Small", **params), timed("Big", **params | {"offset": 40_000})
        assert big < small * 2 + 0.005, (params, small, big)


@pytest.mark.parametrize("params", [{"limit": 501}, {"limit": 0}, {"limit": "ten"}, {"offset": -1}], ids=str)
def test_bad_pagination_is_422(sim: WhippySimulator, api: Api, params: dict[str, Any]) -> None:
    sequence_id = sim.add_sequence("Welcome")
    for path in ("/v1/sequences", "/v1/channels", f"/v1/sequences/{sequence_id}/contacts"):
        response = api.get(path, **params)
        assert response.status_code == 422, path
        assert fields_of(response) == list(params)
    assert api.get("/v1/sequences", limit=500).status_code == 200


def test_contact_sequences(sim: WhippySimulator, api: Api) -> None:
    welcome = sim.add_sequence("Welcome")
    winback = sim.add_sequence("Win-back")
    for sequence_id in (welcome, winback):
        assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202
    sim.wait_idle()
    contact = sim.contact_by(phone="+15555550001")
    assert contact is not None
    path = f"/v1/contacts/{contact['id']}/sequences"
    body = api.post(path, {"limit": 10, "offset": 0}).json()
    assert [record["sequence_id"] for record in body["data"]] == [welcome, winback]
    assert body["total"] == 2
    filtered = api.post(path, {"sequence_id": winback}).json()
    assert [record["sequence_id"] for record in filtered["data"]] == [winback]
    assert api.post(path, {"limit": 1, "offset": 1}).json()["data"][0]["sequence_id"] == winback
    assert fields_of(api.post(path, {"limit": 501})) == ["limit"]
    missing = api.post("/v1/contacts/nobody/sequences", {})
    assert missing.status_code == 404
    assert errors_of(missing) == [{"description": "Contact not found"}]


def test_sequences_and_channels(sim: WhippySimulator, api: Api) -> None:
    welcome = sim.add_sequence("Welcome", steps=["sms", "email"])
    sim.add_sequence("Win-back")
    sim.add_sequence("Hidden", organization_id="org-2")
    listed = api.get("/v1/sequences", title="WELC").json()
    assert [s["id"] for s in listed["data"]] == [welcome]
    assert listed["total"] == 1
    assert api.get("/v1/sequences", limit=1).json()["total"] == 2
    one = api.get(f"/v1/sequences/{welcome}").json()["data"]
    assert one["title"] == "Welcome"
    assert one["status"] == "active"
    assert [(s["channel_type"], s["position"]) for s in one["steps"]] == [("sms", 1), ("email", 2)]
    assert [s["id"] for s in one["steps"]] == [s["id"] for s in sim.sequence(welcome)["steps"]]
    channels = api.get("/v1/channels").json()
    assert channels["total"] == 1
    assert channels["data"][0]["phone"] == CHANNEL_PHONE
    assert set(channels["data"][0]) == {"id", "name", "phone", "email", "type"}


# -- rate limits ----------------------------------------------------------------------------------


def test_sequence_writes_are_limited_to_10_a_minute(make_sim: Callable[..., WhippySimulator]) -> None:
    sim = make_sim(time_scale=60)  # a limit "minute" lasts one real second
    api = Api(sim)
    sequence_id = sim.add_sequence("Welcome")
    sim.clock.freeze()  # every request below falls in one window, however slow the machine
    for _ in range(5):  # reads are in the standard tier, not the time-consuming one
        assert api.get(f"/v1/sequences/{sequence_id}/contacts").status_code == 200
    statuses = [api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code for _ in range(10)]
    assert api.get("/v1/sequences").status_code == 200
    refused = api.enrol(sequence_id, [{"phone": "+15555550001"}])
    assert statuses == [202] * 10
    assert refused.status_code == 429
    wait_ms = int(refused.headers[RATE_HEADER])
    assert wait_ms == 1000  # the whole scaled minute: all ten writes came at the same instant
    assert errors_of(refused) == [{"description": f"Too many requests: retry in {wait_ms} ms"}]
    sim.clock.advance(wait_ms / 1000 - 0.01)
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 429
    sim.clock.advance(0.01)
    assert api.enrol(sequence_id, [{"phone": "+15555550001"}]).status_code == 202


def test_standard_requests_are_limited_to_25_a_second(make_sim: Callable[..., WhippySimulator]) -> None:
    sim = make_sim(time_scale=1)
    api = Api(sim)
    sim.clock.freeze()
    responses = [api.get("/v1/channels") for _ in range(26)]
    assert [response.status_code for response in responses] == [200] * 25 + [429]
    assert int(responses[-1].headers[RATE_HEADER]) == 1000
    assert errors_of(responses[-1])[0]["description"].startswith("Too many requests")


def test_rate_limits_are_off_when_not_enforced(sim: WhippySimulator, api: Api) -> None:
    assert {api.get("/v1/channels").status_code for _ in range(30)} == {200}


# -- faults and the request log -------------------------------------------------------------------


def test_forced_server_error_and_rate_limit(sim: WhippySimulator, api: Api) -> None:
    sim.faults.force("server_error", "rate_limit")
    failed = api.get("/v1/channels")
    assert failed.status_code == 500
    assert failed.json() == {"errors": [{"description": "Internal server error"}], "status": 500}
    limited = api.get("/v1/channels")
    assert limited.status_code == 429
    assert limited.headers[RATE_HEADER] == "50"
    assert errors_of(limited) == [{"description": "Too many requests: retry in 50 ms"}]
    assert api.get("/v1/channels").status_code == 200


def test_lost_response_still_applies_the_write(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    sim.faults.force("lost_response")
    with pytest.raises((requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        api.enrol(sequence_id, [{"phone": "+15555550001"}])
    sim.wait_idle()
    contact = sim.contact_by(phone="+15555550001")
    assert contact is not None
    assert sim.enrolments == {(sequence_id, contact["id"]): 1}
    (record,) = logged(sim, 1)
    assert (record.status, record.items, record.fault) == (202, 1, "lost_response")


def test_request_log_records_method_path_status_items_never_the_key(sim: WhippySimulator, api: Api) -> None:
    sequence_id = sim.add_sequence("Welcome")
    api.enrol(sequence_id, [{"phone": "+15555550001"}, {"phone": "+15555550002"}])
    api.enrol(sequence_id, [])
    api.get("/v1/channels")
    requests.get(f"{sim.url}/v1/channels", timeout=10)
    path = f"/v1/sequences/{sequence_id}/contacts"
    assert [(r.method, r.path, r.status, r.items, r.fault) for r in logged(sim, 4)] == [
        ("POST", path, 202, 2, None),
        ("POST", path, 422, 0, None),
        ("GET", "/v1/channels", 200, None, None),
        ("GET", "/v1/channels", 401, None, None),
    ]
    assert KEY not in repr(sim.requests)


# -- the observed behaviour (shared/api/whippy.md, "What Whippy's own code shows", 2026-12) --------


@pytest.fixture
def observed(make_sim: Callable[..., WhippySimulator]) -> WhippySimulator:
    return make_sim(enforce_rate_limits=False, behaviour="observed")


def test_observed_step_contacts_carry_no_external_id(observed: WhippySimulator) -> None:
    api = Api(observed)
    sequence = observed.add_sequence("Onboarding")
    to = [{"phone": "+14155550101", "email": "a@example.com", "external_id": "crm-1"}]
    assert api.enrol(sequence, to).status_code == 202
    observed.wait_idle()

    item = api.get(f"/v1/sequences/{sequence}/contacts").json()["data"][0]

    assert set(item["contact"]) == {"id", "name", "email", "phone"}
    # The ground truth still knows it: Whippy matched and stored it.
    assert observed.step_contacts(sequence)[0]["contact"]["external_id"] == "crm-1"


def test_observed_422_names_no_item(observed: WhippySimulator) -> None:
    api = Api(observed)
    sequence = observed.add_sequence("Onboarding")

    to = [{"phone": "+14155550101"}, {"phone": "+14155550102", "default_channel_id": "x"}]
    response = api.enrol(sequence, to)

    assert response.status_code == 422
    assert errors_of(response) == [{"description": "must be a UUID"}]


def test_observed_step_contact_lists_refuse_a_limit_above_100(observed: WhippySimulator) -> None:
    api = Api(observed)
    sequence = observed.add_sequence("Onboarding")
    assert api.get(f"/v1/sequences/{sequence}/contacts", limit=100).status_code == 200
    refused = api.get(f"/v1/sequences/{sequence}/contacts", limit=101)
    assert refused.status_code == 422
    assert errors_of(refused) == [{"description": "must be an integer between 1 and 100"}]
    assert api.get("/v1/sequences", limit=500).status_code == 200  # other lists as documented


def test_observed_channels_have_no_email_and_no_total(observed: WhippySimulator) -> None:
    observed.add_channel(email="sales@example.com", name="Sales mail", type="email")
    body = Api(observed).get("/v1/channels").json()
    assert set(body) == {"data"}
    assert [set(channel) for channel in body["data"]] == [{"id", "name", "phone", "type"}] * 2


def test_observed_steps_have_no_position_and_no_channel_type(observed: WhippySimulator) -> None:
    sequence = observed.add_sequence("Onboarding", steps=["sms", "email"])
    data = Api(observed).get(f"/v1/sequences/{sequence}").json()["data"]
    assert [set(step) for step in data["steps"]] == [{"id", "title"}] * 2
    assert data["status"] == "active"
