"""The simulators' ground truth over HTTP (``/_sim/``), for a simulator in another process."""

from __future__ import annotations

import requests

from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook


def test_reply_ground_truth_is_what_the_simulator_holds(reply_connection, reply_simulator, reply_account):
    hook = ReplyHook()
    ids = [i["id"] for i in hook.import_contacts([{"email": "ada@example.com"}])["items"]]
    hook.add_contacts_to_sequence(reply_account.sequence_id, ids)

    enrolments = requests.get(f"{reply_simulator.url}/_sim/enrolments", timeout=10).json()
    assert enrolments == {"enrolments": [[reply_account.sequence_id, ids[0], 1]]}
    log = requests.get(f"{reply_simulator.url}/_sim/requests", timeout=10).json()
    assert [(r["method"], r["path"], r["status"]) for r in log["requests"]] == [
        ("POST", "/v3/contacts/import", 200),
        ("POST", f"/v3/sequences/{reply_account.sequence_id}/contact-links/bulk", 200),
    ]
    assert log["next_offset"] == 2
    # Never a header, so never the key.
    assert reply_account.api_key not in str(log)
    later = requests.get(f"{reply_simulator.url}/_sim/requests", params={"offset": 1}, timeout=10).json()
    assert [r["path"] for r in later["requests"]] == [log["requests"][1]["path"]]


def test_ground_truth_is_read_only_unlogged_and_never_faulted(whippy_connection, whippy_simulator):
    whippy_simulator.faults.force("server_error")
    assert requests.get(f"{whippy_simulator.url}/_sim/requests", timeout=10).json()["requests"] == []
    assert requests.post(f"{whippy_simulator.url}/_sim/enrolments", timeout=10).status_code == 405
    assert requests.get(f"{whippy_simulator.url}/_sim/nothing", timeout=10).status_code == 404
    assert requests.get(f"{whippy_simulator.url}/_sim/enrolments", timeout=10).json() == {"enrolments": []}
    # The forced fault still waits for the first real request, and only that one is logged.
    assert whippy_simulator.requests == []
    WhippyHook().list_channels()
    first = whippy_simulator.requests[0]
    assert (first.path, first.fault) == ("/v1/channels", "server_error")
