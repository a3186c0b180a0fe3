"""Demo: start both simulators and drive the hooks through a small, realistic flow.

Run with ``make demo``. Nothing to configure: the simulators run on loopback in this process,
with fake keys, and the hooks reach them through ``AIRFLOW_CONN_*`` environment variables,
exactly as a deployment would reach the real services through Airflow connections.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("AIRFLOW_HOME", str(Path(tempfile.gettempdir()) / "airflow-provider-sequences-demo"))

from airflow_provider_sequences.exceptions import SequencesApiError
from airflow_provider_sequences.hooks.reply import ReplyHook
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.testing import (
    ReplySimulator,
    WhippySimulator,
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
)

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman"]


def crm_rows(count: int, seed: int = 7) -> list[dict[str, str]]:
    """A small CRM export: names, work emails, US mobile numbers."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        rows.append(
            {
                "firstName": first,
                "lastName": last,
                "email": f"{first}.{last}.{i}@example.com".lower(),
                "phone": f"+1415555{i:04d}",
                "company": rng.choice(["Initech", "Globex", "Umbrella", "Hooli"]),
            }
        )
    return rows


def heading(text: str) -> None:
    print(f"\n== {text} ==")


def reply_flow(sim: ReplySimulator) -> None:
    account = seed_reply_account(sim)
    other = sim.add_sequence("Webinar follow-up", owner_user_id=account.user_id)
    os.environ[connection_env_var("reply_default")] = connection_json("reply", sim.url, account.api_key)
    hook = ReplyHook()
    heading("Reply.io")
    print(hook.test_connection()[1])
    print("Sequences:", ", ".join(f"{s['id']} {s['name']!r}" for s in hook.list_sequences()))

    rows = crm_rows(250)
    rows[17]["email"] = "not-an-email"
    try:
        hook.import_contacts(rows)
    except SequencesApiError as exc:
        print(f"Import of 250 rows with one bad email refused as a whole:\n  {exc}")
    rows.pop(17)
    imported = hook.import_contacts(rows)
    ids = [item["id"] for item in imported["items"]]
    print(f"Import of the other {len(rows)} rows in one request: created {imported['added']}")

    # Someone is already in the sequence, and one id does not exist.
    hook.add_contacts_to_sequence(account.sequence_id, ids[:3])
    answer = hook.add_contacts_to_sequence(
        account.sequence_id, [*ids, 999_999], ignore_step_delay=True, remove_from_existing=False
    )
    reasons = Counter(
        (error.get("error") if isinstance(error, dict) else error)
        for error in answer["notProcessed"].values()
    )
    added = len(answer["added"])
    print(f"Bulk add of {len(ids) + 1} ids in one request: added {added}, not processed {dict(reasons)}")
    moved = hook.add_contacts_to_sequence(other, ids[:5], remove_from_existing=True)
    print(f"Moved {len(moved['added'])} contacts to sequence {other} (removeFromExisting)")
    enrolled = sum(1 for _ in hook.iter_sequence_contacts(account.sequence_id))
    print(f"Sequence {account.sequence_id} now holds {enrolled} contacts")
    print(f"Requests spent: {len(sim.requests)} (the hook counted {sum(hook.request_counts.values())})")


def whippy_flow(sim: WhippySimulator) -> None:
    account = seed_whippy_account(sim)
    os.environ[connection_env_var("whippy_default")] = connection_json("whippy", sim.url, account.api_key)
    hook = WhippyHook()
    heading("Whippy")
    print(hook.test_connection()[1])
    channels = hook.list_channels()["data"]
    print("Channels:", ", ".join(f"{c['name']} {c['phone']}" for c in channels))
    sequences = list(hook.iter_sequences())
    print("Sequences:", ", ".join(f"{s['title']!r}" for s in sequences))

    rows = crm_rows(120, seed=11)
    for row in rows[::10]:
        row["email"] = ""  # the email step cannot use these: Whippy will silently ignore them
    to = [
        {
            "phone": row["phone"],
            "name": f"{row['firstName']} {row['lastName']}",
            **({"email": row["email"]} if row["email"] else {}),
            "external_id": f"crm-{i}",
        }
        for i, row in enumerate(rows)
    ]
    answer = hook.create_sequence_contacts(account.email_sequence_id, to, from_=account.channel_phone)
    print(f"Sent {len(to)} contacts to the email sequence in one request; Whippy answered 202 {answer}")
    sim.wait_idle()
    enrolled = {item["contact"]["phone"] for item in hook.iter_sequence_contacts(account.email_sequence_id)}
    ignored = [item for item in to if item["phone"] not in enrolled]
    print(
        f"Read back: {len(enrolled)} enrolled; {len(ignored)} silently ignored (no email for an email step)"
    )
    print(f"Requests spent: {len(sim.requests)}")


def main() -> int:
    with ReplySimulator() as reply, WhippySimulator() as whippy:
        reply_flow(reply)
        whippy_flow(whippy)
    print("\nDone. Both simulators ran on loopback; no real service was contacted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
