"""The simulators as a deployment sees them: a process of their own, asked for ground truth
over HTTP (``/_sim/``), and the rate-limit floor of what they were sent."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests

from airflow_provider_sequences.testing.whippy_requests import rate_limit_tier
from tests.e2e.processes import Processes, free_port

#: Documented limits (requests, window in seconds), per the API contracts.
REPLY_LIMITS = [(100, 60.0), (3000, 3600.0)]
WHIPPY_WRITE_LIMITS = [(10, 60.0)]
WHIPPY_READ_LIMITS = [(25, 1.0)]


def floor_seconds(requests_sent: int, limits: list[tuple[int, float]], time_scale: float) -> float:
    """Least real time from the first to the last of ``requests_sent`` under sliding windows."""
    if requests_sent <= 1:
        return 0.0
    return max((requests_sent - 1) // count * period for count, period in limits) / time_scale


@dataclass
class Simulators:
    """Both simulators, started with ``python -m airflow_provider_sequences.testing both``."""

    reply_url: str
    whippy_url: str
    connections: dict[str, str]
    reply_sequence: int
    whippy_sequence: str
    whippy_channel: str
    time_scale: float
    offsets: dict[str, int] = field(default_factory=lambda: {"reply": 0, "whippy": 0})

    @classmethod
    def start(cls, processes: Processes, time_scale: float, processing_delay: float) -> Simulators:
        reply_port, whippy_port = free_port(), free_port()
        argv = [
            sys.executable,
            "-u",  # its exports are read from its log as soon as it prints them
            "-m",
            "airflow_provider_sequences.testing",
            "both",
            "--time-scale",
            str(time_scale),
            "--reply-port",
            str(reply_port),
            "--whippy-port",
            str(whippy_port),
            "--processing-delay",
            str(processing_delay),
        ]
        processes.start("simulators", argv, os.environ)
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            processes.check_alive()
            text = processes.log("simulators").read_text(errors="replace")
            if text.count("export AIRFLOW_CONN_") >= 2:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the simulators did not print their connections:\n{text[-2000:]}")
        connections = dict(re.findall(r"export (AIRFLOW_CONN_\w+)='([^']*)'", text))
        reply = re.search(r"Reply simulator(?: \(\w+\))? on (\S+): user \d+, sequence (\d+)", text)
        whippy = re.search(
            r"Whippy simulator(?: \(\w+\))? on (\S+): channel (\S+), SMS sequence ([^,\s]+)", text
        )
        if reply is None or whippy is None or len(connections) < 2:
            raise RuntimeError(f"cannot read the simulators' accounts from:\n{text[-2000:]}")
        return cls(
            reply_url=reply.group(1),
            whippy_url=whippy.group(1),
            connections=connections,
            reply_sequence=int(reply.group(2)),
            whippy_sequence=whippy.group(3),
            whippy_channel=whippy.group(2).rstrip(","),
            time_scale=time_scale,
        )

    def url(self, service: str) -> str:
        return self.reply_url if service == "reply" else self.whippy_url

    def enrolments(self, service: str) -> dict[tuple[str, str], int]:
        """Ground truth: (sequence, contact) -> times enrolled."""
        answer = requests.get(f"{self.url(service)}/_sim/enrolments", timeout=30)
        answer.raise_for_status()
        return {(str(s), str(c)): int(n) for s, c, n in answer.json()["enrolments"]}

    def requests_since_mark(self, service: str) -> list[dict[str, Any]]:
        """The request log since the last :meth:`mark`."""
        answer = requests.get(
            f"{self.url(service)}/_sim/requests", params={"offset": self.offsets[service]}, timeout=30
        )
        answer.raise_for_status()
        records: list[dict[str, Any]] = answer.json()["requests"]
        return records

    def mark(self) -> None:
        """Later figures count only requests from now on."""
        for service in ("reply", "whippy"):
            answer = requests.get(
                f"{self.url(service)}/_sim/requests", params={"offset": 1 << 30}, timeout=30
            )
            answer.raise_for_status()
            self.offsets[service] = int(answer.json()["next_offset"])

    def traffic(self, service: str) -> dict[str, Any]:
        """Requests since the mark, 429s among them, and their span against the floor."""
        records = self.requests_since_mark(service)
        statuses = Counter(str(r["status"]) for r in records)
        answered = [r for r in records if r["status"] != 429]
        if service == "reply":
            bound = answered
            limits = REPLY_LIMITS
            what = "requests (every request counts)"
        else:
            bound = [r for r in answered if rate_limit_tier(r["method"], r["path"]) == "time_consuming"]
            limits = WHIPPY_WRITE_LIMITS
            what = "sequence writes (10 a minute)"
        span = bound[-1]["at"] - bound[0]["at"] if len(bound) > 1 else 0.0
        floor = floor_seconds(len(bound), limits, self.time_scale)
        # For each 429 (the first few): how many answered requests of its kind the service
        # had counted in the window before it; the documented count means a client over-sent.
        count, period = limits[0]
        window = period / self.time_scale
        refused = [
            {
                "at_s": round(r["at"] - records[0]["at"], 3),
                "request": f"{r['method']} {r['path']}",
                f"answered_in_the_{window:g}_s_before": sum(
                    1 for b in bound if r["at"] - window < b["at"] <= r["at"]
                ),
                "limit": count,
            }
            for r in records
            if r["status"] == 429
        ][:8]
        return {
            "requests": len(records),
            "writes": sum(1 for r in answered if r["method"] != "GET"),
            "reads": sum(1 for r in answered if r["method"] == "GET"),
            "responses_429": statuses.get("429", 0),
            "by_status": dict(statuses),
            "rate_bound": what,
            "rate_bound_requests": len(bound),
            "span_s": round(span, 2),
            "floor_s": round(floor, 2),
            "ratio_to_floor": round(span / floor, 3) if floor else None,
            "first_429s": refused,
        }


def new_enrolments(
    before: dict[tuple[str, str], int], after: dict[tuple[str, str], int]
) -> tuple[int, dict[str, int]]:
    """Enrolments since ``before`` (each time a contact was put into a sequence counts: that is
    what the service really did), and the contacts among them now enrolled more than once
    (``sequence/contact`` -> times)."""
    events = sum(n - before.get(pair, 0) for pair, n in after.items())
    twice = {f"{s}/{c}": n for (s, c), n in after.items() if n > 1 and n != before.get((s, c), 0)}
    return events, twice


def dump(figures: dict[str, Any]) -> str:
    return json.dumps(figures, indent=2, sort_keys=True)
