"""The Reply.io simulator over real HTTP: every documented behaviour, exact values."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_sequences.testing.ratelimit import Limit
from airflow_provider_sequences.testing.reply import ReplySimulator, rate_limit_identity

PROBLEM = "application/problem+json"
_numbers = itertools.count(1)


class Client:
    """Plain ``requests`` calls against a running simulator with one key."""

    def __init__(self, sim: ReplySimulator, key: str | None, **headers: str) -> None:
        self.sim = sim
        self.headers = dict(headers)
        if key is not None:
            self.headers["Authorization"] = f"Bearer {key}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.sim.url + path, params=params, headers=self.headers, timeout=10)

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.sim.url + path, json=body, headers=self.headers, timeout=10)


@dataclass
class Account:
    """A fresh user with an all-scope team key and one sequence, plus a second user."""

    sim: ReplySimulator
    user: int
    other: int
    key: str
    seq: int
    api: Client

    def contact(self, email: str | None = None, **fields: Any) -> int:
        email = f"c{next(_numbers)}@example.com" if email is None else email
        return self.sim.add_contact(email, owner_user_id=fields.pop("owner", self.user), **fields)

    def bulk_add(self, ids: list[Any], seq: int | None = None, **options: Any) -> requests.Response:
        return self.api.post(
            f"/v3/sequences/{seq or self.seq}/contact-links/bulk", {"contactIds": ids, **options}
        )


def new_account(sim: ReplySimulator) -> Account:
    n = next(_numbers)
    user = sim.add_user(f"owner{n}@example.com")
    other = sim.add_user(f"other{n}@example.com")
    key = f"test-reply-key-{n}"
    sim.add_api_key(key, user)
    seq = sim.add_sequence(f"Outreach {n}", owner_user_id=user)
    return Account(sim, user, other, key, seq, Client(sim, key))


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[ReplySimulator]:
    sim = ReplySimulator()
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., ReplySimulator]]:
    """Start a simulator with particular options; stopped after the test."""
    started: list[ReplySimulator] = []

    def make(**kwargs: Any) -> ReplySimulator:
        sim = ReplySimulator(**kwargs)
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def acct(shared_sim: ReplySimulator) -> Account:
    return new_account(shared_sim)


def assert_problem(response: requests.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if code is not None:
        assert body["code"] == code
    return body


def pointers(body: dict[str, Any]) -> list[str]:
    return [e["pointer"] for e in body["errors"]]


def future(days: int = 1) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).isoformat().replace("+00:00", "Z")


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic dGVzdA==", "Bearer "])
def test_missing_or_unknown_key_is_a_bare_401(acct: Account, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = requests.get(acct.sim.url + "/v3/whoami", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.content == b""
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_whoami_is_the_key_owner(acct: Account) -> None:
    response = acct.api.get("/v3/whoami")
    assert response.status_code == 200
    assert response.json() == {"userId": acct.user}


def test_team_key_acts_for_members_only(acct: Account) -> None:
    sim = acct.sim
    member = sim.add_user(f"member{next(_numbers)}@example.com")
    sim.add_api_key(acct.key + "-team", acct.user, members=[member])
    by_id = Client(sim, acct.key + "-team", **{"X-User-Id": str(member)}).get("/v3/whoami")
    assert by_id.json() == {"userId": member}
    member_email = sim.data.users[member].upper()  # emails name users case-insensitively
    by_email = Client(sim, acct.key + "-team", **{"X-User-Email": member_email}).get("/v3/whoami")
    assert by_email.json() == {"userId": member}
    as_owner = Client(sim, acct.key + "-team", **{"X-User-Id": str(acct.user)}).get("/v3/whoami")
    assert as_owner.json() == {"userId": acct.user}
    stranger = Client(sim, acct.key + "-team", **{"X-User-Id": str(acct.other)}).get("/v3/whoami")
    assert_problem(stranger, 403, "user.forbidden")
    garbage = Client(sim, acct.key + "-team", **{"X-User-Id": "seven"}).get("/v3/whoami")
    assert_problem(garbage, 400)


def test_organization_key_must_name_the_acting_user(acct: Account) -> None:
    sim = acct.sim
    sim.add_api_key(acct.key + "-org", acct.user, kind="organization", members=[acct.other])
    body = assert_problem(Client(sim, acct.key + "-org").get("/v3/whoami"), 400, "user.notSpecified")
    assert "acting user" in body["detail"]
    named = Client(sim, acct.key + "-org", **{"X-User-Id": str(acct.other)}).get("/v3/whoami")
    assert named.status_code == 200
    assert named.json() == {"userId": acct.other}


def test_acting_user_sees_their_own_sequences(acct: Account) -> None:
    sim = acct.sim
    theirs = sim.add_sequence("Theirs", owner_user_id=acct.other)
    sim.add_api_key(acct.key + "-team", acct.user, members=[acct.other])
    as_other = Client(sim, acct.key + "-team", **{"X-User-Id": str(acct.other)})
    assert [s["id"] for s in as_other.get("/v3/sequences").json()["items"]] == [theirs]
    assert_problem(acct.api.get(f"/v3/sequences/{theirs}"), 404, "sequence.notFound")


SCOPED = [
    ("GET", "/v3/sequences", "sequences:read"),
    ("GET", "/v3/sequences/{seq}", "sequences:read"),
    ("GET", "/v3/sequences/{seq}/steps", "sequences:read"),
    ("GET", "/v3/sequences/{seq}/contacts", "sequences:read"),
    ("POST", "/v3/sequences/{seq}/contact-links/bulk", "sequences:operate"),
    ("POST", "/v3/sequences/{seq}/contact-links/bulk-delete", "sequences:operate"),
    ("POST", "/v3/contacts/import", "contacts:write"),
    ("GET", "/v3/contacts?email=a@example.com", "contacts:read"),
]
ALL_SCOPES = {"contacts:read", "contacts:write", "sequences:read", "sequences:operate"}


@pytest.mark.parametrize(("method", "path", "scope"), SCOPED)
def test_each_endpoint_needs_its_scope(acct: Account, method: str, path: str, scope: str) -> None:
    acct.sim.add_api_key(acct.key + "-narrow", acct.user, scopes=ALL_SCOPES - {scope})
    url = acct.sim.url + path.format(seq=acct.seq)
    headers = {"Authorization": f"Bearer {acct.key}-narrow"}
    response = requests.request(method, url, headers=headers, json={"contactIds": [1]}, timeout=10)
    body = assert_problem(response, 403, "auth.missingScope")
    assert scope in body["detail"]
    # The same request with the scope passes the scope check.
    headers = {"Authorization": f"Bearer {acct.key}"}
    assert (
        requests.request(method, url, headers=headers, json={"contactIds": [1]}, timeout=10).status_code
        != 403
    )


# -- problems -----------------------------------------------------------------------------------


def test_framework_errors_are_problems_too(acct: Account) -> None:
    assert_problem(acct.api.get("/v3/no-such-thing"), 404, "route.notFound")
    assert_problem(requests.delete(acct.sim.url + "/v3/whoami", timeout=10), 405, "method.notAllowed")
    url = f"{acct.sim.url}/v3/sequences/{acct.seq}/contact-links/bulk"
    broken = requests.post(
        url, data=b"{not json", headers={**acct.api.headers, "Content-Type": "application/json"}, timeout=10
    )
    assert_problem(broken, 400, "request.invalidJson")
    as_text = requests.post(
        url, data=b"{}", headers={**acct.api.headers, "Content-Type": "text/plain"}, timeout=10
    )
    assert_problem(as_text, 415)
    assert_problem(
        acct.api.post(f"/v3/sequences/{acct.seq}/contact-links/bulk", [1, 2]), 400, "validation.failed"
    )


# -- sequences ----------------------------------------------------------------------------------


def test_list_sequences_pages_with_top_skip_and_has_more(acct: Account) -> None:
    sim = acct.sim
    ids = [acct.seq] + [sim.add_sequence(f"Drip {i}", owner_user_id=acct.user) for i in range(4)]
    sim.add_sequence("Not mine", owner_user_id=acct.other)
    first = acct.api.get("/v3/sequences", top=2).json()
    assert [s["id"] for s in first["items"]] == ids[:2]
    assert first["hasMore"] is True
    middle = acct.api.get("/v3/sequences", top=2, skip=2).json()
    assert ([s["id"] for s in middle["items"]], middle["hasMore"]) == (ids[2:4], True)
    last = acct.api.get("/v3/sequences", top=2, skip=4).json()
    assert ([s["id"] for s in last["items"]], last["hasMore"]) == (ids[4:], False)
    everything = acct.api.get("/v3/sequences").json()
    assert [s["id"] for s in everything["items"]] == ids
    assert everything["hasMore"] is False
    item = everything["items"][0]
    assert set(item) == {"id", "name", "status", "ownerUserId", "created", "isArchived"}
    assert (item["ownerUserId"], item["status"], item["isArchived"]) == (acct.user, "active", False)


def test_list_sequences_default_top_is_25(acct: Account) -> None:
    for i in range(26):
        acct.sim.add_sequence(f"Bulk {i}", owner_user_id=acct.user)
    page = acct.api.get("/v3/sequences").json()
    assert len(page["items"]) == 25
    assert page["hasMore"] is True


def test_list_sequences_filters(acct: Account) -> None:
    paused = acct.sim.add_sequence("Paused winback", owner_user_id=acct.user, status="paused")
    acct.sim.add_sequence("Brand new", owner_user_id=acct.user, status="new")
    assert [s["id"] for s in acct.api.get("/v3/sequences", status="paused").json()["items"]] == [paused]
    assert [s["id"] for s in acct.api.get("/v3/sequences", name="WINBACK").json()["items"]] == [paused]
    body = assert_problem(acct.api.get("/v3/sequences", status="archived"), 400, "validation.failed")
    assert body["errors"][0]["parameter"] == "status"


@pytest.mark.parametrize("top", ["0", "1001", "-1", "ten"])
def test_top_out_of_range_is_a_400(acct: Account, top: str) -> None:
    body = assert_problem(acct.api.get("/v3/sequences", top=top), 400, "validation.failed")
    assert body["errors"] == [{"parameter": "top", "detail": body["errors"][0]["detail"]}]
    assert_problem(acct.api.get(f"/v3/sequences/{acct.seq}/contacts", top=top), 400)


def test_get_sequence_and_steps(acct: Account) -> None:
    sequence = acct.api.get(f"/v3/sequences/{acct.seq}").json()
    assert sequence["id"] == acct.seq
    assert len(sequence["steps"]) == 3
    assert isinstance(sequence["settings"], dict)
    steps = acct.api.get(f"/v3/sequences/{acct.seq}/steps").json()
    assert isinstance(steps, list)
    assert steps == sequence["steps"]
    assert all(isinstance(step["id"], int) for step in steps)
    assert [step["number"] for step in steps] == ["1", "2", "3"]


@pytest.mark.parametrize("suffix", ["", "/steps", "/contacts"])
def test_unknown_sequence_is_a_404_with_code(acct: Account, suffix: str) -> None:
    body = assert_problem(acct.api.get(f"/v3/sequences/999999{suffix}"), 404, "sequence.notFound")
    assert "999999" in body["detail"]


def test_sequence_contacts_page(acct: Account) -> None:
    ids = [acct.contact() for _ in range(3)]
    assert acct.bulk_add(ids).status_code == 200
    first = acct.api.get(f"/v3/sequences/{acct.seq}/contacts", top=2).json()
    step1 = acct.sim.sequence_contacts(acct.seq)[0]["currentStep"]
    assert first["items"][0] == {
        "contactId": ids[0],
        "email": acct.sim.contact(ids[0])["email"],
        "statusInSequence": "active",
        "currentStep": step1,
    }
    assert ([i["contactId"] for i in first["items"]], first["hasMore"]) == (ids[:2], True)
    rest = acct.api.get(f"/v3/sequences/{acct.seq}/contacts", top=2, skip=2).json()
    assert ([i["contactId"] for i in rest["items"]], rest["hasMore"]) == (ids[2:], False)


# -- bulk add -----------------------------------------------------------------------------------


def test_bulk_add_adds_and_records_ground_truth(acct: Account) -> None:
    a, b = acct.contact(), acct.contact()
    response = acct.bulk_add([a, b])
    assert response.status_code == 200
    assert response.json() == {"added": [a, b], "notProcessed": {}}
    assert acct.sim.enrolments[(acct.seq, a)] == 1
    assert acct.sim.enrolments[(acct.seq, b)] == 1
    steps = [s["id"] for s in acct.api.get(f"/v3/sequences/{acct.seq}/steps").json()]
    truth = acct.sim.sequence_contacts(acct.seq)
    assert [(t["contactId"], t["statusInSequence"], t["currentStep"]) for t in truth] == [
        (a, "active", steps[0]),
        (b, "active", steps[0]),
    ]


def test_bulk_add_options_are_recorded(acct: Account) -> None:
    steps = [s["id"] for s in acct.api.get(f"/v3/sequences/{acct.seq}/steps").json()]
    a = acct.contact()
    start = future(2)
    response = acct.bulk_add([a], startStepId=steps[1], ignoreStepDelay=True, startFrom=start)
    assert response.json() == {"added": [a], "notProcessed": {}}
    [link] = acct.sim.sequence_contacts(acct.seq)
    assert (link["currentStep"], link["ignoreStepDelay"]) == (steps[1], True)
    assert datetime.fromisoformat(link["startFrom"]) == datetime.fromisoformat(start.replace("Z", "+00:00"))


def test_bulk_add_every_per_item_slug(acct: Account) -> None:
    ok = acct.contact()
    theirs = acct.contact(owner=acct.other)
    no_email = acct.contact("")
    flagged = acct.contact(invalid=True)
    already = acct.contact()
    assert acct.bulk_add([already]).json()["added"] == [already]
    response = acct.bulk_add([424242, theirs, no_email, flagged, already, ok])
    assert response.status_code == 200
    body = response.json()
    assert body["added"] == [ok]
    assert {k: v["error"] for k, v in body["notProcessed"].items()} == {
        "424242": "contactNotFound",
        str(theirs): "forbidden",
        str(no_email): "invalidInput",
        str(flagged): "invalidInput",
        str(already): "contactAlreadyInSequence",
    }
    assert all(
        isinstance(v["errorDetails"], str) and v["errorDetails"] for v in body["notProcessed"].values()
    )
    # An add while already in the sequence does not count.
    assert acct.sim.enrolments[(acct.seq, already)] == 1
    assert (acct.seq, theirs) not in acct.sim.enrolments


def test_bulk_add_contact_limit(make_sim: Callable[..., ReplySimulator]) -> None:
    acct = new_account(make_sim(contact_limit=2))
    second_seq = acct.sim.add_sequence("Second", owner_user_id=acct.user)
    a, b, c = acct.contact(), acct.contact(), acct.contact()
    assert acct.bulk_add([a, b, c]).json() == {
        "added": [a, b],
        "notProcessed": {
            str(c): {
                "error": "contactLimitExceeded",
                "errorDetails": "the plan allows 2 contacts in sequences",
            }
        },
    }
    # A contact already active elsewhere takes no new place in the plan.
    assert acct.bulk_add([a, c], seq=second_seq).json()["added"] == [a]


def test_bulk_add_duplicate_ids_add_once(acct: Account) -> None:
    a, b = acct.contact(), acct.contact()
    assert acct.bulk_add([a, a, b, a]).json() == {"added": [a, b], "notProcessed": {}}
    truth = acct.sim.enrolments
    assert (truth[(acct.seq, a)], truth[(acct.seq, b)]) == (1, 1)


def test_remove_from_existing(acct: Account) -> None:
    second = acct.sim.add_sequence("Second", owner_user_id=acct.user)
    third = acct.sim.add_sequence("Third", owner_user_id=acct.user)
    a, b = acct.contact(), acct.contact()
    acct.bulk_add([a, b])
    assert acct.bulk_add([a], seq=second).json()["added"] == [a]
    assert {c["contactId"] for c in acct.sim.sequence_contacts(acct.seq)} == {a, b}
    assert acct.bulk_add([a, b], seq=third, removeFromExisting=True).json()["added"] == [a, b]
    assert acct.sim.sequence_contacts(acct.seq) == []
    assert acct.sim.sequence_contacts(second) == []
    assert [c["contactId"] for c in acct.sim.sequence_contacts(third)] == [a, b]


def test_bad_contact_ids_are_a_400_per_element(acct: Account) -> None:
    good = acct.contact()
    body = assert_problem(acct.bulk_add([good, True, 1.5, "7", None]), 400, "validation.failed")
    assert pointers(body) == ["/contactIds/1", "/contactIds/2", "/contactIds/3", "/contactIds/4"]
    assert all(e["detail"] for e in body["errors"])
    assert (acct.seq, good) not in acct.sim.enrolments  # nothing applied


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/contactIds"),
        ({"contactIds": []}, "/contactIds"),
        ({"contactIds": 5}, "/contactIds"),
        ({"contactIds": list(range(1, 1002))}, "/contactIds"),
        ({"contactIds": [1], "removeFromExisting": "true"}, "/removeFromExisting"),
        ({"contactIds": [1], "ignoreStepDelay": None}, "/ignoreStepDelay"),
        ({"contactIds": [1], "startStepId": "3"}, "/startStepId"),
        ({"contactIds": [1], "startFrom": "tomorrow"}, "/startFrom"),
        ({"contactIds": [1], "startFrom": "2099-01-01T00:00:00"}, "/startFrom"),  # no offset
    ],
)
def test_bulk_add_body_validation(acct: Account, body: dict[str, Any], pointer: str) -> None:
    response = acct.api.post(f"/v3/sequences/{acct.seq}/contact-links/bulk", body)
    assert pointers(assert_problem(response, 400, "validation.failed")) == [pointer]


def test_bulk_add_max_ids_is_a_parameter(make_sim: Callable[..., ReplySimulator]) -> None:
    acct = new_account(make_sim(max_bulk_ids=2))
    ids = [acct.contact() for _ in range(3)]
    body = assert_problem(acct.bulk_add(ids), 400)
    assert pointers(body) == ["/contactIds"]
    assert "at most 2" in body["errors"][0]["detail"]
    assert acct.bulk_add(ids[:2]).json()["added"] == ids[:2]


def test_start_from_in_the_past_is_a_400(acct: Account) -> None:
    a = acct.contact()
    body = assert_problem(acct.bulk_add([a], startFrom="2023-11-07T05:31:56Z"), 400, "validation.failed")
    assert pointers(body) == ["/startFrom"]
    assert "in the past" in body["errors"][0]["detail"]
    assert acct.bulk_add([a], startFrom=future()).json()["added"] == [a]


def test_unknown_start_step_is_a_400(acct: Account) -> None:
    other_seq = acct.sim.add_sequence("Other", owner_user_id=acct.user)
    foreign_step = acct.api.get(f"/v3/sequences/{other_seq}/steps").json()[0]["id"]
    body = assert_problem(acct.bulk_add([acct.contact()], startStepId=foreign_step), 400, "validation.failed")
    assert pointers(body) == ["/startStepId"]
    assert str(foreign_step) in body["errors"][0]["detail"]


def test_bulk_add_to_unknown_sequence_is_a_404(acct: Account) -> None:
    assert_problem(acct.bulk_add([acct.contact()], seq=987654), 404, "sequence.notFound")
    theirs = acct.sim.add_sequence("Theirs", owner_user_id=acct.other)
    assert_problem(acct.bulk_add([acct.contact()], seq=theirs), 404, "sequence.notFound")


def test_bulk_delete(acct: Account) -> None:
    a, b, outside = acct.contact(), acct.contact(), acct.contact()
    theirs = acct.contact(owner=acct.other)
    acct.bulk_add([a, b])
    response = acct.api.post(
        f"/v3/sequences/{acct.seq}/contact-links/bulk-delete", {"contactIds": [a, outside, 555555, theirs, a]}
    )
    assert response.status_code == 200
    assert response.json() == {
        "requested": 4,
        "removed": 1,
        "notFound": 2,
        "notInSequence": 1,
        "removedIds": [a],
    }
    assert [c["contactId"] for c in acct.sim.sequence_contacts(acct.seq)] == [b]
    # A removed contact may be added again, and that counts as a second enrolment.
    assert acct.bulk_add([a]).json()["added"] == [a]
    assert acct.sim.enrolments[(acct.seq, a)] == 2
    bad = acct.api.post(f"/v3/sequences/{acct.seq}/contact-links/bulk-delete", {"contactIds": [1, "x"]})
    assert pointers(assert_problem(bad, 400)) == ["/contactIds/1"]


# -- contacts -----------------------------------------------------------------------------------


def test_import_creates_updates_and_matches_email_case_insensitively(acct: Account) -> None:
    existing = acct.contact("Known@Example.com", firstName="Kim", company="Old Co")
    items = [
        {
            "email": "new1@example.com",
            "firstName": "Ann",
            "customFields": [{"name": "Tier", "value": "gold"}],
        },
        {"email": "known@EXAMPLE.com", "firstName": "Kimberly", "company": "New Co", "city": "Oslo"},
        {"email": "NEW1@example.com", "lastName": "Lee"},
    ]
    response = acct.api.post("/v3/contacts/import", {"items": items, "options": {}})
    assert response.status_code == 200
    body = response.json()
    created = body["items"][0]["id"]
    assert body == {
        "items": [
            {"id": created, "status": "Created", "error": None},
            {"id": existing, "status": "Updated", "error": None},
            {"id": created, "status": "Updated", "error": None},
        ],
        "added": 1,
        "updated": 2,
        "skipped": 0,
        "failed": 0,
    }
    # Without overwriteExisting an update only fills empty fields.
    known = acct.sim.contact(existing)
    assert (known["firstName"], known["company"], known["city"]) == ("Kim", "Old Co", "Oslo")
    new = acct.sim.contact_by_email("new1@example.com")
    assert new is not None
    assert (new["id"], new["firstName"], new["lastName"], new["ownerUserId"]) == (
        created,
        "Ann",
        "Lee",
        acct.user,
    )
    assert new["customFields"] == [{"name": "Tier", "value": "gold"}]
    assert set(new) == {
        "id", "email", "firstName", "lastName", "phone", "title", "company", "city", "state",
        "country", "timeZoneId", "linkedInUrl", "notes", "customFields", "ownerUserId",
    }  # fmt: skip


def test_import_overwrite_and_skip_existing(acct: Account) -> None:
    existing = acct.contact("pat@example.com", firstName="Pat")
    overwrite = {
        "items": [{"email": "pat@example.com", "firstName": "Patricia"}],
        "options": {"overwriteExisting": True},
    }
    assert acct.api.post("/v3/contacts/import", overwrite).json()["items"][0]["status"] == "Updated"
    assert acct.sim.contact(existing)["firstName"] == "Patricia"
    skip = {
        "items": [{"email": "PAT@example.com", "firstName": "P"}, {"email": "pat@example.com"}],
        "options": {"skipExisting": True},
    }
    body = acct.api.post("/v3/contacts/import", skip).json()
    assert [(i["id"], i["status"]) for i in body["items"]] == [(existing, "Skipped"), (existing, "Skipped")]
    assert (body["skipped"], body["updated"]) == (2, 0)
    assert acct.sim.contact(existing)["firstName"] == "Patricia"
    both = {
        "items": [{"email": "pat@example.com"}],
        "options": {"skipExisting": True, "overwriteExisting": True},
    }
    assert pointers(assert_problem(acct.api.post("/v3/contacts/import", both), 400)) == [
        "/options/skipExisting"
    ]


def test_import_email_owned_by_another_user_fails_that_item(acct: Account) -> None:
    theirs = acct.contact(owner=acct.other)
    email = acct.sim.contact(theirs)["email"]
    body = acct.api.post("/v3/contacts/import", {"items": [{"email": email}]}).json()
    assert body["items"][0]["status"] == "Failed"
    assert body["failed"] == 1


def test_import_one_bad_email_rejects_the_whole_batch(acct: Account) -> None:
    items = [
        {"email": "fine@example.com"},
        {"email": "not-an-email"},
        {"email": "ok2@example.com"},
        {"firstName": "X"},
    ]
    body = assert_problem(acct.api.post("/v3/contacts/import", {"items": items}), 400, "validation.failed")
    assert pointers(body) == ["/items/1/email", "/items/3/email"]
    assert acct.sim.contact_by_email("fine@example.com") is None


def test_import_bad_email_fails_only_that_item_when_configured(
    make_sim: Callable[..., ReplySimulator],
) -> None:
    acct = new_account(make_sim(import_rejects_whole_batch_on_invalid_email=False))
    items = [
        {"email": "fine@example.com"},
        {"email": "not-an-email"},
        {"email": "long@example.com", "title": "x" * 256},
    ]
    response = acct.api.post("/v3/contacts/import", {"items": items})
    assert response.status_code == 200
    body = response.json()
    assert [i["status"] for i in body["items"]] == ["Created", "Failed", "Failed"]
    assert [i["id"] is None for i in body["items"]] == [False, True, True]
    assert "email" in body["items"][1]["error"]
    assert "title" in body["items"][2]["error"]
    assert "255" in body["items"][2]["error"]
    assert (body["added"], body["failed"]) == (1, 2)
    assert acct.sim.contact_by_email("long@example.com") is None


def test_import_string_fields_at_most_255(acct: Account) -> None:
    items = [
        {"email": "a255@example.com", "notes": "n" * 255},
        {"email": "a256@example.com", "notes": "n" * 256},
    ]
    body = acct.api.post("/v3/contacts/import", {"items": items}).json()
    assert [i["status"] for i in body["items"]] == ["Created", "Failed"]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/items"),
        ({"items": []}, "/items"),
        ({"items": ["a@example.com"]}, "/items/0"),
        ({"items": [{"email": "a@example.com", "firstName": 5}]}, "/items/0/firstName"),
        ({"items": [{"email": "a@example.com", "customFields": [{"value": 1}]}]}, "/items/0/customFields/0"),
        (
            {"items": [{"email": "a@example.com"}], "options": {"skipExisting": "yes"}},
            "/options/skipExisting",
        ),
        ({"items": [{"email": "a@example.com"}], "options": {"listIds": [1.5]}}, "/options/listIds"),
    ],
)
def test_import_body_validation(acct: Account, body: dict[str, Any], pointer: str) -> None:
    response = acct.api.post("/v3/contacts/import", body)
    assert pointers(assert_problem(response, 400, "validation.failed")) == [pointer]


def test_import_max_items(make_sim: Callable[..., ReplySimulator]) -> None:
    acct = new_account(make_sim(max_import_items=2))
    items = [{"email": f"m{i}@example.com"} for i in range(3)]
    body = assert_problem(acct.api.post("/v3/contacts/import", {"items": items}), 400)
    assert pointers(body) == ["/items"]
    assert acct.api.post("/v3/contacts/import", {"items": items[:2]}).json()["added"] == 2


def test_large_import_runs_as_a_background_job(make_sim: Callable[..., ReplySimulator]) -> None:
    acct = new_account(make_sim(import_async_threshold=2, job_delay=0.3))
    small = acct.api.post("/v3/contacts/import", {"items": [{"email": "s@example.com"}]})
    assert small.status_code == 200
    items = [{"email": f"j{i}@example.com"} for i in range(3)]
    response = acct.api.post("/v3/contacts/import", {"items": items})
    assert response.status_code == 202
    job_id = response.json()["jobId"]
    assert response.headers["Location"] == f"/v3/background-jobs/{job_id}"
    running = acct.api.get(response.headers["Location"]).json()
    assert (running["jobId"], running["status"]) == (job_id, "Processing")
    assert "result" not in running
    time.sleep(0.35)
    done = acct.api.get(response.headers["Location"]).json()
    assert (done["status"], done["progress"]) == ("Done", 100)
    result = done["result"]
    assert [i["status"] for i in result["items"]] == ["Created"] * 3
    assert (result["added"], result["updated"], result["skipped"], result["failed"]) == (3, 0, 0, 0)
    assert [i["id"] for i in result["items"]] == [acct.sim.contact_by_email(i["email"])["id"] for i in items]  # type: ignore[index]
    assert_problem(acct.api.get("/v3/background-jobs/nope"), 404, "job.notFound")
    acct.sim.add_api_key("test-reply-key-other", acct.other)
    assert_problem(Client(acct.sim, "test-reply-key-other").get(f"/v3/background-jobs/{job_id}"), 404)


def test_find_contact_by_email(acct: Account) -> None:
    mine = acct.contact("Find.Me@example.com", firstName="Fin")
    found = acct.api.get("/v3/contacts", email="find.me@EXAMPLE.com").json()
    assert [c["id"] for c in found["items"]] == [mine]
    assert found["items"][0]["firstName"] == "Fin"
    assert acct.api.get("/v3/contacts", email="nobody@example.com").json() == {"items": []}
    theirs = acct.sim.contact(acct.contact(owner=acct.other))["email"]
    assert acct.api.get("/v3/contacts", email=theirs).json() == {"items": []}
    body = assert_problem(acct.api.get("/v3/contacts"), 400)
    assert body["errors"][0]["parameter"] == "email"


# -- rate limits ----------------------------------------------------------------------------------


def test_minute_limit_per_user_shared_across_keys(make_sim: Callable[..., ReplySimulator]) -> None:
    acct = new_account(make_sim(time_scale=60))  # a rate-limit minute lasts one real second
    acct.sim.add_api_key("test-reply-key-second", acct.user)
    second = Client(acct.sim, "test-reply-key-second")
    for i in range(100):
        assert (acct.api if i % 2 else second).get("/v3/whoami").status_code == 200
    refused = second.get("/v3/whoami")
    body = assert_problem(refused, 429, "rateLimit.exceeded")
    assert refused.headers["Retry-After"] == "1"  # ceil of under a second, at least 1
    assert body["status"] == 429
    assert acct.api.get("/v3/whoami").status_code == 429
    # Another user's budget is their own.
    acct.sim.add_api_key("test-reply-key-other", acct.other)
    assert Client(acct.sim, "test-reply-key-other").get("/v3/whoami").status_code == 200
    time.sleep(int(refused.headers["Retry-After"]))
    assert acct.api.get("/v3/whoami").status_code == 200


def test_hour_limit(make_sim: Callable[..., ReplySimulator]) -> None:
    acct = new_account(make_sim(time_scale=3600))  # a rate-limit hour lasts one real second
    # 2,990 requests spent this hour, straight into the hourly window: a smaller, fast check.
    for _ in range(2990):
        assert acct.sim.limiter.hit(rate_limit_identity(acct.user), "all", [Limit(3000, 3600)]) == 0
    for _ in range(10):
        assert acct.api.get("/v3/whoami").status_code == 200
    refused = acct.api.get("/v3/whoami")
    assert_problem(refused, 429, "rateLimit.exceeded")
    assert refused.headers["Retry-After"] == "1"
    time.sleep(1)
    assert acct.api.get("/v3/whoami").status_code == 200


def test_rate_limits_can_be_switched_off(make_sim: Callable[..., ReplySimulator]) -> None:
    acct = new_account(make_sim(time_scale=60, enforce_rate_limits=False))
    assert {acct.api.get("/v3/whoami").status_code for _ in range(110)} == {200}


# -- faults and the request log -----------------------------------------------------------------


def test_forced_server_error_and_rate_limit(acct: Account) -> None:
    acct.sim.faults.force("server_error")
    assert_problem(acct.api.get("/v3/whoami"), 500, "server.error")
    acct.sim.faults.force("rate_limit")
    refused = acct.api.get("/v3/whoami")
    assert_problem(refused, 429, "rateLimit.exceeded")
    assert refused.headers["Retry-After"] == "1"
    assert acct.api.get("/v3/whoami").status_code == 200


def test_lost_response_applies_the_bulk_add(acct: Account) -> None:
    a = acct.contact()
    acct.sim.faults.force("lost_response")
    with pytest.raises((requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        acct.bulk_add([a]).json()
    assert acct.sim.enrolments[(acct.seq, a)] == 1
    last = acct.sim.requests[-1]
    assert (last.method, last.path, last.status, last.items, last.fault) == (
        "POST",
        f"/v3/sequences/{acct.seq}/contact-links/bulk",
        200,
        1,
        "lost_response",
    )
    # The client's retry meets the truth: the contact is already in.
    assert acct.bulk_add([a]).json()["notProcessed"][str(a)]["error"] == "contactAlreadyInSequence"


def test_request_log_records_without_the_key(acct: Account, tmp_path: Path) -> None:
    before = len(acct.sim.requests)
    ids = [acct.contact() for _ in range(3)]
    acct.bulk_add(ids)
    acct.api.post(
        "/v3/contacts/import", {"items": [{"email": "log1@example.com"}, {"email": "log2@example.com"}]}
    )
    acct.api.get("/v3/sequences", top=5)
    requests.get(acct.sim.url + "/v3/whoami", timeout=10)
    records = acct.sim.requests[before:]
    assert [(r.method, r.path, r.status, r.items, r.fault) for r in records] == [
        ("POST", f"/v3/sequences/{acct.seq}/contact-links/bulk", 200, 3, None),
        ("POST", "/v3/contacts/import", 200, 2, None),
        ("GET", "/v3/sequences", 200, None, None),
        ("GET", "/v3/whoami", 401, None, None),
    ]
    log = tmp_path / "requests.jsonl"
    acct.sim.faults.dump_log(log)
    text = log.read_text()
    assert json.loads(text.splitlines()[-1])["status"] == 401
    assert "test-reply-key" not in text
    assert "test-reply-key" not in repr(acct.sim.requests)


# -- the fast paths are never more lenient than the full checks ---------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "ann@example.com",
        "Ann.Lee+tag@Sub.Example.CO.uk",
        "o'brien@example.com",
        "a@b.cd",
        "x" * 64 + "@example.com",
        "x" * 65 + "@example.com",
        "a@" + "b" * 63 + ".com",
        "a@" + "b" * 64 + ".com",
        "a@" + ".".join(["b" * 60] * 4) + ".com",
        "a..b@example.com",
        ".a@example.com",
        "a.@example.com",
        "a@example",
        "a@example.c0m",
        "a@-example.com",
        "a@example-.com",
        "a@ex--ample.com",
        "a@xn--mnchen-3ya.de",
        "a@xn--abc.com",
        "a@example.test",
        "a@example.TEST",
        "a@localhost",
        "a@mail.local",
        "a@x.onion",
        "a@x.invalid",
        "a@1.in-addr.arpa",
        "a @example.com",
        "a@example.com ",
        "Ann <a@example.com>",
        '"a b"@example.com',
        "a@[127.0.0.1]",
        "ä@example.com",
        "a@exämple.com",
        "a@@example.com",
        "@example.com",
        "a@",
    ],
)
def test_the_fast_email_check_agrees_with_email_validator(email: str) -> None:
    from email_validator import EmailNotValidError, validate_email

    from airflow_provider_sequences.testing.reply_requests import _surely_valid, email_error

    try:
        validate_email(email, check_deliverability=False)
        valid = True
    except EmailNotValidError:
        valid = False
    assert not _surely_valid(email) or valid
    assert (email_error(email) is None) == valid


def test_the_fast_email_check_never_accepts_what_email_validator_refuses() -> None:
    import random

    from email_validator import validate_email

    from airflow_provider_sequences.testing.reply_requests import _surely_valid

    rng = random.Random(7)
    local_chars, domain_chars = "aZ9._+-'!~", "aZ9.-"
    tails = [
        "com",
        "COM",
        "uk",
        "test",
        "local",
        "localhost",
        "arpa",
        "onion",
        "invalid",
        "c0",
        "x",
        "xn--p1ai",
    ]
    accepted = 0
    for _ in range(20_000):
        local = "".join(rng.choice(local_chars) for _ in range(rng.choice([0, 1, 3, 8, 64, 65])))
        labels = ["".join(rng.choice(domain_chars) for _ in range(rng.choice([0, 1, 4, 63, 64])))]
        email = f"{local}@{'.'.join([*labels[: rng.randint(0, 1)], rng.choice(tails)])}"
        if _surely_valid(email):
            accepted += 1
            validate_email(email, check_deliverability=False)  # raises if the fast path was wrong
    assert accepted > 100  # the generator makes some plain addresses too


@pytest.mark.parametrize(
    "item",
    [
        "a@example.com",
        None,
        {"email": 5},
        {"email": "a@example.com", "firstName": True},
        {"email": "a@example.com", "notes": "n" * 256},
        {"email": "a@example.com", "customFields": {"name": "x", "value": 1}},
        {"email": "a@example.com", "customFields": ["x"]},
        {"email": "a@example.com", "customFields": [{"value": 1}]},
        {"email": "a@example.com", "customFields": [{"id": True, "value": 1}]},
        {"email": "a@example.com", "customFields": [{"name": "x", "value": [1]}]},
        {"email": "a@example.com", "customFields": [{"name": "x", "value": "v" * 256}]},
    ],
)
def test_items_that_are_not_plain_get_every_check(item: Any) -> None:
    from airflow_provider_sequences.testing.reply_requests import (
        check_import_schema,
        length_error,
        plain_items,
    )

    good = {"email": "g@example.com", "firstName": "G", "customFields": [{"name": "x", "value": 1.5}]}
    assert plain_items([good])
    assert check_import_schema([good], {}) == []
    assert length_error(good) is None
    assert not plain_items([good, item])
    assert check_import_schema([good, item], {}) or length_error(item) is not None


def test_bulk_add_without_a_contact_limit_skips_the_active_count(acct: Account) -> None:
    # A sequence-wide scan per bulk add made big runs quadratic; without a plan limit the
    # simulator no longer gathers the active contacts, and the answers are the same.
    other = acct.sim.add_sequence("Other", owner_user_id=acct.user)
    ids = [acct.contact() for _ in range(3)]
    assert acct.bulk_add(ids[:2], seq=other).json() == {"added": ids[:2], "notProcessed": {}}
    assert acct.bulk_add(ids).json() == {"added": ids, "notProcessed": {}}
    again = acct.bulk_add(ids[:1], removeFromExisting=True).json()
    assert again["added"] == []
    assert again["notProcessed"][str(ids[0])]["error"] == "contactAlreadyInSequence"
    links = acct.sim.sequence_contacts(acct.seq)
    assert [link["contactId"] for link in links] == ids
    assert len({link["addedAt"] for link in links}) == 1  # one request, one moment
