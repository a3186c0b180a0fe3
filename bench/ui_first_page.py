"""How fast the Sequence syncs view answers on a large state: ``python -m bench.ui_first_page``.

Builds a state of ``--keys`` keys (default 1,000,000) in one sequence, written directly with
``executemany`` (minutes faster than syncing them), in a fresh AIRFLOW_HOME's embedded SQLite
file, and times requests to the view through Airflow's own api-server app (in process, a
logged-in admin): the sequence page with its chart and first page of not-processed keys, the
same filtered by a rare reason, by a key prefix, the next page, an older run whose keys all
moved to later runs (the slowest case: no row matches), a key's history, and the CSV.

The state: 97% of the keys added by the first night, 3% not processed by the third night
(invalidEmail 60%, invalidPhone 30%, fieldTooLong 9.9%, forbidden 0.1%). Results go to
``bench/results/ui_first_page.json`` (``--out`` elsewhere) and into the scenarios of
``bench/results/latest.json``, other figures kept (``--no-latest`` for a smoke run with
``--keys 20000``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ui_first_page.json"
#: The whole bench's figures: these go in as one more scenario, the others kept as they are.
LATEST = ROOT / "bench" / "results" / "latest.json"
SCENARIO = "ui_first_page"
SCOPE = ("reply", "reply_default", "1001")
DAG = "reply_nightly_crm_sync"
REASONS = (("invalidEmail", 0.6), ("invalidPhone", 0.3), ("fieldTooLong", 0.099), ("forbidden", 0.001))


def run_key(night: int) -> str:
    return f"{DAG}.enrol_new_leads[-1]:scheduled__2026-12-0{night}T02:00:00+00:00"


def _stamp(moment: datetime) -> str:
    """As SQLAlchemy stores a UTC DateTime in SQLite."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def build_state(path: Path, keys: int) -> dict[str, int]:
    """The state's tables (the provider's own migrations), then rows by executemany."""
    import sqlalchemy as sa

    from airflow_provider_sequences.sync.schema import ensure_current
    from airflow_provider_sequences.sync.state import state_table

    ensure_current(sa.create_engine(f"sqlite:///{path}"))
    rng = random.Random(7)
    start = datetime(2026, 12, 1, 2, tzinfo=timezone.utc)
    refused: dict[str, int] = {}
    cumulative = []
    total = 0.0
    for reason, share in REASONS:
        total += share
        cumulative.append((total, reason))

    def rows() -> Any:
        for i in range(keys):
            key = f"crm-{i:07d}"
            if rng.random() < 0.03:
                draw = rng.random()
                reason = next((r for limit, r in cumulative if draw < limit), REASONS[-1][0])
                refused[reason] = refused.get(reason, 0) + 1
                moment = _stamp(start + timedelta(days=2))
                yield (
                    *SCOPE, key, "not_processed", reason, f"{reason} in row {i}",
                    None, None, None, 1, run_key(1), run_key(3), moment, moment,
                )  # fmt: skip
            else:
                moment = _stamp(start)
                yield (
                    *SCOPE, key, "added", None, None,
                    f"{i:032x}", str(10_000_000 + i), None, 1, run_key(1), run_key(1), moment, moment,
                )  # fmt: skip

    with sqlite3.connect(path) as db:
        names = ", ".join(column.name for column in state_table.columns)
        marks = ", ".join("?" for _ in state_table.columns)
        db.executemany(f"INSERT INTO {state_table.name} ({names}) VALUES ({marks})", rows())  # noqa: S608
        not_processed = sum(refused.values())
        for night, counts in (
            (1, {"rows": keys, "added": keys - not_processed, "not_processed": not_processed}),
            (2, {"rows": keys, "unchanged": keys - not_processed, "not_processed": not_processed}),
            (3, {"rows": keys, "unchanged": keys - not_processed, "not_processed": not_processed}),
        ):
            requests = {"requests": 2 * keys // 1000, "write_requests": 2 * keys // 1000, "read_requests": 0}
            stats: dict[str, Any] = {**counts, **requests, "not_processed_by_reason": refused}
            moment = _stamp(start + timedelta(days=night - 1, minutes=40))
            db.execute(
                "INSERT INTO sequence_sync_runs (service, account, sequence_id, run_id, stats, finished, "
                "started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*SCOPE, run_key(night), json.dumps(stats), True, moment, moment),
            )
    return refused


def merge_into(path: Path, figures: dict[str, Any]) -> None:
    """Put ``figures`` in ``path``'s scenarios, keeping every other figure there."""
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("scenarios", {})[SCENARIO] = figures
    path.write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui_first_page", description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"default {RESULTS.relative_to(ROOT)}")
    parser.add_argument(
        "--latest",
        type=Path,
        default=LATEST,
        help=f"the bench's figures to merge these into (default {LATEST.relative_to(ROOT)})",
    )
    parser.add_argument("--no-latest", dest="latest", action="store_const", const=None)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    from airflow_provider_sequences.testing.dags import prepare_airflow_home

    os.environ.update(
        {
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API_AUTH__JWT_SECRET": "ui-bench-secret",
        }
    )
    prepare_airflow_home(home, home / "dags")
    started = time.perf_counter()
    refused = build_state(home / "sequence_sync_state.db", args.keys)
    built = time.perf_counter() - started
    print(f"state of {args.keys:,} keys built in {built:.1f} s ({sum(refused.values()):,} not processed)")

    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    scope = {"service": SCOPE[0], "account": SCOPE[1], "sequence": SCOPE[2]}
    cases: dict[str, tuple[str, dict[str, str]]] = {
        "sequence page, first page of the latest run": ("/sequence-syncs/sequence", scope),
        "filtered by a rare reason (0.1%)": ("/sequence-syncs/sequence", {**scope, "reason": "forbidden"}),
        "key prefix search": ("/sequence-syncs/sequence", {**scope, "key_prefix": "crm-05"}),
        "next page": ("/sequence-syncs/sequence", {**scope, "after": "crm-0500000"}),
        "an older run, no key left in it": ("/sequence-syncs/sequence", {**scope, "run": run_key(1)}),
        "a key's history": ("/sequence-syncs/key", {"key": "crm-0123456"}),
        "index of sequences": ("/sequence-syncs/", {}),
    }
    timings: dict[str, dict[str, float]] = {}
    with TestClient(create_app("core")) as client:
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
        client.cookies.set(COOKIE_NAME_JWT_TOKEN, token)
        for name, (path, params) in cases.items():
            seconds = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                answer = client.get(path, params=params)
                seconds.append(time.perf_counter() - began)
                assert answer.status_code == 200, (name, answer.status_code, answer.text[:500])
            timings[name] = {"first": seconds[0], "median": statistics.median(seconds)}
            print(f"{name:<48} first {seconds[0]:6.3f} s   median {statistics.median(seconds):6.3f} s")
        began = time.perf_counter()
        download = client.get("/sequence-syncs/sequence.csv", params={**scope, "run": run_key(3)})
        csv_seconds = time.perf_counter() - began
        csv_rows = download.text.count("\n") - 1
        print(f"{'CSV of the latest run':<48} {csv_seconds:6.3f} s for {csv_rows:,} rows")
    figures = {
        "command": "python -m bench.ui_first_page " + " ".join(sys.argv[1:]),
        "keys": args.keys,
        "not_processed": sum(refused.values()),
        "state_built_seconds": round(built, 1),
        "timings_seconds": timings,
        "csv": {"rows": csv_rows, "seconds": csv_seconds},
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    if args.latest is not None:
        merge_into(args.latest, figures)
        print(f"merged into {args.latest} (scenarios.{SCENARIO})")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
