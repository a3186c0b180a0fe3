"""What a user would hand-write: a loop over the rows with ``requests``, one call per contact.

Reply: look the contact up by email, create it (an import of one item) when it is missing,
then add its one id to the sequence. Whippy: one create-sequence-contacts call per contact.
Run in a fresh process like the worker: ``python -m bench.baseline SPEC_JSON``.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import Any

import requests


def reply_loop(spec: dict[str, Any], rows: list[dict[str, Any]]) -> int:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {spec['api_key']}"
    url = spec["url"]
    added = 0
    for row in rows:
        email = row["email"]
        found = session.get(f"{url}/v3/contacts", params={"email": email}, timeout=30).json()
        if found.get("items"):
            contact_id = found["items"][0]["id"]
        else:
            item = {"email": email, "firstName": row["first_name"], "lastName": row["last_name"]}
            answer = session.post(f"{url}/v3/contacts/import", json={"items": [item]}, timeout=30).json()
            contact_id = answer["items"][0]["id"]
        session.post(
            f"{url}/v3/sequences/{spec['sequence_id']}/contact-links/bulk",
            json={"contactIds": [contact_id]},
            timeout=30,
        )
        added += 1
    return added


def whippy_loop(spec: dict[str, Any], rows: list[dict[str, Any]]) -> int:
    session = requests.Session()
    session.headers["X-WHIPPY-KEY"] = spec["api_key"]
    url = f"{spec['url']}/v1/sequences/{spec['sequence_id']}/contacts"
    added = 0
    for row in rows:
        contact = {"phone": row["phone_e164"], "email": row["email"], "external_id": row["crm_id"]}
        session.post(url, json={"to": [contact]}, timeout=30)
        added += 1
    return added


def main() -> None:
    spec = json.loads(sys.argv[1])
    with sqlite3.connect(spec["export"]) as connection:
        connection.row_factory = sqlite3.Row
        rows = [dict(r) for r in connection.execute("SELECT * FROM crm_contacts")]
    # The hand-written loop gets clean rows: a user's version would not survive bad ones.
    rows = [r for r in rows if r["email"] and "@" in r["email"]]
    for row in rows:
        digits = "".join(ch for ch in str(row["phone"]) if ch.isdigit())
        row["phone_e164"] = "+1" + digits[-10:]
    started = time.perf_counter()
    added = (reply_loop if spec["service"] == "reply" else whippy_loop)(spec, rows)
    wall = time.perf_counter() - started
    sys.stdout.write("BENCH-RESULT " + json.dumps({"wall_s": wall, "sent": added}) + "\n")


if __name__ == "__main__":
    main()
