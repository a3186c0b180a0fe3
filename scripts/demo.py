"""The main job, on the embedded default: two nights of a CRM export synced into sequences.

Run with ``make demo``. It builds a SQLite CRM export of realistic rows (bad ones included),
starts the Reply.io and Whippy simulators on loopback, and runs the example DAGs with a real
Airflow (``dag.test()`` and its metadata database). Night two adds new leads and fixes some
bad rows: only those are sent. Nothing reaches a real service.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# SEQUENCES_DEMO_DIR: somewhere else than .demo (the browser test writes its demo state there).
WORK = Path(os.environ.get("SEQUENCES_DEMO_DIR") or ROOT / ".demo")

from airflow_provider_sequences.testing.dags import prepare_airflow_home

prepare_airflow_home(WORK / "airflow", ROOT / "dags_examples")

import pandas as pd

from airflow_provider_sequences.testing import (
    ReplySimulator,
    WhippySimulator,
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
)
from airflow_provider_sequences.testing.base import check_behaviour
from airflow_provider_sequences.testing.crm import crm_frame, write_crm_sqlite
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_states, task_xcom

EXPORT_ROWS = 5_000
AIRFLOW_LOG = WORK / "airflow.log"
#: The demo's own lines; Airflow's (about 170 per night) go to AIRFLOW_LOG.
OUT = sys.stdout


def say(text: str = "") -> None:
    print(text, file=OUT, flush=True)


@contextmanager
def airflow_output_to(path: Path) -> Iterator[None]:
    """Send everything written to this process's stdout and stderr to ``path`` (Airflow's task
    logs go there), while :func:`say` still prints to the terminal."""
    global OUT
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    OUT = os.fdopen(os.dup(1), "w", buffering=1)
    with path.open("a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            OUT.close()
            OUT = sys.stdout


def summarise(title: str, result: dict[str, Any] | None, sim_requests: int) -> None:
    say(f"\n-- {title}")
    if result is None:
        say(f"   no result (the task failed: see {AIRFLOW_LOG})")
        return
    stats = result["stats"]
    say(
        f"   {stats['rows']:,} rows: {stats['added']:,} added, {stats['not_processed']:,} not processed, "
        f"{stats.get('unchanged', 0):,} unchanged (enrolled on an earlier night), "
        f"{stats['duplicates']:,} duplicate rows"
    )
    say(
        f"   requests: {stats['requests']} ({stats['write_requests']} writes, {stats['read_requests']} reads "
        f"of contacts; the simulator saw {sim_requests})"
    )
    reasons = Counter(outcome["reason"] for outcome in result["not_processed"].values())
    for reason, count in reasons.most_common():
        example_key, example = next(
            (k, o) for k, o in result["not_processed"].items() if o["reason"] == reason
        )
        say(f"   {reason:<24} {count:>5}   e.g. {example_key}: {example['detail'][:90]}")


def night_two(export: pd.DataFrame) -> pd.DataFrame:
    """The next night's export: 40 new leads, and 15 rows whose bad email was fixed."""
    fixed = export.index[export["email"].isna()][:15]
    export.loc[fixed, "email"] = [f"fixed.{i}@example.com" for i in range(len(fixed))]
    new = crm_frame(40, seed=99, bad_share=0.0, first_id=len(export) + 1_000_000)
    return pd.concat([export, new], ignore_index=True)


def main() -> int:
    AIRFLOW_LOG.unlink(missing_ok=True)
    print(f"Airflow's own log lines go to {AIRFLOW_LOG}", flush=True)
    with airflow_output_to(AIRFLOW_LOG):
        return demo()


def demo() -> int:
    export_path = WORK / "crm_export.db"
    export = crm_frame(EXPORT_ROWS)
    os.environ[connection_env_var("crm_export")] = f'{{"conn_type": "sqlite", "host": "{export_path}"}}'
    state_file = WORK / "airflow" / "sequence_sync_state.db"
    state_file.unlink(missing_ok=True)

    # As the services' own clients report the real servers answer (SIMULATOR_BEHAVIOUR=documented
    # for the reference docs' answers).
    behaviour = check_behaviour(os.environ.get("SIMULATOR_BEHAVIOUR", "observed"))
    print(f"Simulators answer as {behaviour}")
    with (
        ReplySimulator(behaviour=behaviour) as reply,
        WhippySimulator(processing_delay=0.5, behaviour=behaviour) as whippy,
    ):
        reply_account = seed_reply_account(reply)
        whippy_account = seed_whippy_account(whippy)
        os.environ[connection_env_var("reply_default")] = connection_json(
            "reply", reply.url, reply_account.api_key
        )
        os.environ[connection_env_var("whippy_default")] = connection_json(
            "whippy", whippy.url, whippy_account.api_key
        )
        reply_dag = load_dag("reply_nightly_crm_sync", ROOT / "dags_examples")
        whippy_dag = load_dag("whippy_nightly_crm_sync", ROOT / "dags_examples")
        for night in (1, 2):
            if night == 2:
                export = night_two(export)
            write_crm_sqlite(export_path, export)
            say(f"\n=== Night {night}: CRM export of {len(export):,} rows in {export_path} ===")
            seen_reply, seen_whippy = len(reply.requests), len(whippy.requests)
            run = run_dag(reply_dag, run_conf={"sequence_id": reply_account.sequence_id})
            say(f"reply_nightly_crm_sync: {task_states(run)}")
            summarise("Reply.io", task_xcom(run, "enrol_new_leads"), len(reply.requests) - seen_reply)
            run = run_dag(
                whippy_dag,
                run_conf={
                    "sequence_id": whippy_account.sequence_id,
                    "from_channel": whippy_account.channel_phone,
                },
            )
            say(f"whippy_nightly_crm_sync: {task_states(run)}")
            summarise("Whippy", task_xcom(run, "enrol_new_leads"), len(whippy.requests) - seen_whippy)
        twice = sum(1 for n in [*reply.enrolments.values(), *whippy.enrolments.values()] if n > 1)
        say(f"\nContacts enrolled more than once across both nights, per the simulators: {twice}")
    say(f"Full results: each task's XCom 'return_value'; the sync state: {state_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
