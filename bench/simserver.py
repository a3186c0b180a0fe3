"""The simulators in their own process, driven over stdin/stdout with one JSON object per line.

Run by the benchmarks (never by hand): the simulators' CPU is then not charged to the sync
being measured. On start it prints the accounts; then it answers commands:

- ``{"cmd": "stats"}``: requests seen since the last reset, per service, by kind and status;
- ``{"cmd": "reset"}``: forget the request log;
- ``{"cmd": "new_sequences"}``: a fresh Reply and Whippy sequence (a clean slate per scenario);
- ``{"cmd": "new_whippy_organization"}``: later Whippy sequences belong to a new organization,
  with no contacts yet; answers its API key (Whippy matches contacts across an organization,
  so one export's contacts would otherwise meet another export's);
- ``{"cmd": "seed_reply_contacts", "emails": [...]}``: create Reply contacts (or find those
  that exist), answer their ids;
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections import Counter
from typing import Any

from airflow_provider_sequences.testing import seed_reply_account, seed_whippy_account
from airflow_provider_sequences.testing.base import Simulator
from airflow_provider_sequences.testing.reply import ReplySimulator
from airflow_provider_sequences.testing.whippy import WhippySimulator


def _stats(sim: Simulator) -> dict[str, Any]:
    records = sim.requests
    by_status = Counter(str(r.status) for r in records)
    writes = [r for r in records if r.method != "GET"]
    return {
        "requests": len(records),
        "writes": sum(1 for r in records if r.method != "GET" and r.status != 429),
        "reads": sum(1 for r in records if r.method == "GET" and r.status != 429),
        "rate_limited": by_status.get("429", 0),
        "by_status": dict(by_status),
        "first_at": records[0].at if records else None,
        "last_at": records[-1].at if records else None,
        "writes_first_at": writes[0].at if writes else None,
        "writes_last_at": writes[-1].at if writes else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--rate-limits", action="store_true", help="enforce the documented limits")
    args = parser.parse_args(argv)
    common: dict[str, Any] = {"time_scale": args.time_scale, "enforce_rate_limits": args.rate_limits}
    # The simulators hold every contact of every run: with the default thresholds, the
    # collector's full passes over that growing heap showed up as the slowest requests.
    gc.set_threshold(100_000, 50, 100)
    reply = ReplySimulator(**common).start()
    whippy = WhippySimulator(**common).start()
    r_account = seed_reply_account(reply)
    w_account = seed_whippy_account(whippy)
    counter = 0
    organization = "org-1"  # the seeded account's

    def answer(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    answer(
        {
            "reply": {
                "url": reply.url,
                "api_key": r_account.api_key,
                "user_id": r_account.user_id,
                "sequence_id": r_account.sequence_id,
            },
            "whippy": {
                "url": whippy.url,
                "api_key": w_account.api_key,
                "channel_phone": w_account.channel_phone,
                "sequence_id": w_account.sequence_id,
            },
        }
    )
    try:
        for line in sys.stdin:
            command = json.loads(line)
            name = command["cmd"]
            if name == "stats":
                answer({"reply": _stats(reply), "whippy": _stats(whippy)})
            elif name == "reset":
                reply.faults.clear_log()
                whippy.faults.clear_log()
                answer({"ok": True})
            elif name == "new_sequences":
                counter += 1
                answer(
                    {
                        "reply": reply.add_sequence(
                            f"Bench {counter}", owner_user_id=r_account.user_id, steps=3
                        ),
                        "whippy": whippy.add_sequence(
                            f"Bench {counter}", steps=["sms", "sms"], organization_id=organization
                        ),
                    }
                )
            elif name == "new_whippy_organization":
                counter += 1
                organization = f"org-bench-{counter}"
                key = f"{w_account.api_key}-{counter}"
                whippy.add_api_key(key, organization)
                whippy.add_channel(
                    phone=w_account.channel_phone, name="Sales line", organization_id=organization
                )
                answer({"api_key": key})
            elif name == "seed_reply_contacts":
                # Idempotent: a contact that exists already (seeded before) answers its id.
                ids = []
                for email in command["emails"]:
                    found = reply.contact_by_email(email)
                    ids.append(
                        found["id"]
                        if found is not None
                        else reply.add_contact(email, owner_user_id=r_account.user_id)
                    )
                answer({"ids": ids})
            elif name == "quit":
                answer({"ok": True})
                break
            else:
                answer({"error": f"unknown command {name!r}"})
    finally:
        reply.stop()
        whippy.stop()


if __name__ == "__main__":
    main()
