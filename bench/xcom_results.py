"""The operator's result through XCom, at scale: ``python -m bench.xcom_results [--rows N]``.

A Reply night of ``--rows`` rows runs through the operator and ``dag.test()`` (a real metadata
database, SQLite) once per XCom backend, each in a fresh process (Airflow reads its XCom
backend once): Airflow's default (the result in the metadata database) and
``XComObjectStorageBackend`` (apache-airflow-providers-common-io; a local ``file://`` path,
results over ``--threshold`` bytes go there, gzip). A downstream task pulls the whole result.

Reported per backend: ``push_s`` (from the operator's ``execute`` returning to the task's
end: serialising and storing the result), ``metadata_db_growth_mb`` (growth of the pages the
SQLite metadata database uses), ``xcom_in_db_mb`` (the XCom table's values), ``store_mb``
(what the object store holds), ``pull_s`` (the downstream task's ``xcom_pull`` of the
result), ``peak_rss_mb`` (the worker's peak resident memory: ``dag.test()`` runs the tasks in
its own process) and ``run_s`` (the whole DAG run).
Merges them into ``bench/results/latest.json`` (``--output``) as ``scenarios.xcom_results``,
keeping the file's other figures; ``python -m bench`` runs it too (``--only xcom``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.harness import ROOT, SimProcess, export, machine, run_worker
from bench.worker import peak_rss_mb

BACKENDS = {
    "default": None,
    "object_storage": "airflow.providers.common.io.xcom.backend.XComObjectStorageBackend",
}
DAG_ID = "bench_xcom_results"

DAG_TEMPLATE = """
import time
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator

MARKS = Path({marks!r})


class TimedReply(ReplyAddContactsToSequenceOperator):
    def execute(self, context):
        result = super().execute(context)
        (MARKS / "returned").write_text(repr(time.time()))
        return result


with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    enrol = TimedReply(
        task_id="enrol",
        sequence_id={sequence_id!r},
        sql="SELECT crm_id, email, first_name FROM crm_contacts",
        source_conn_id="crm_export",
        key_column="crm_id",
        column_map={{"email": "email", "first_name": "firstName"}},
        state_conn_id="sync_state",
        max_not_processed_share=None,
    )

    @task
    def downstream(**context):
        started = time.perf_counter()
        result = context["ti"].xcom_pull(task_ids="enrol")
        pulled = time.perf_counter() - started
        added, not_processed = len(result["added"]), len(result["not_processed"])
        return {{"pull_s": pulled, "added": added, "not_processed": not_processed}}

    enrol >> downstream()
"""


def _used_bytes(database: Path) -> int:
    """The pages SQLite uses (its file keeps freed pages: its size barely moves)."""
    with sqlite3.connect(database) as connection:
        size = connection.execute("PRAGMA page_size").fetchone()[0]
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    return int(size * (pages - free))


def _xcom_bytes(database: Path) -> int:
    """What the XCom table holds, values included."""
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT coalesce(sum(length(value)), 0) FROM xcom").fetchone()[0])


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One backend, in this (fresh) process."""
    work = Path(spec["workdir"])
    home, dags, store, marks = (work / name for name in ("airflow", "dags", "store", "marks"))
    for folder in (home, dags, store, marks):
        folder.mkdir(parents=True, exist_ok=True)
    if spec["backend_class"]:
        os.environ["AIRFLOW__CORE__XCOM_BACKEND"] = spec["backend_class"]
        os.environ["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_PATH"] = f"file://{store}"
        os.environ["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_THRESHOLD"] = str(spec["threshold"])
        os.environ["AIRFLOW__COMMON_IO__XCOM_OBJECTSTORAGE_COMPRESSION"] = "gzip"
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    os.environ["AIRFLOW_CONN_REPLY_DEFAULT"] = json.dumps(
        {
            "conn_type": "reply",
            "host": spec["url"],
            "password": spec["api_key"],
            "extra": {"requests_per_minute": 1_000_000, "requests_per_hour": 1_000_000},
        }
    )
    os.environ["AIRFLOW_CONN_CRM_EXPORT"] = json.dumps({"conn_type": "sqlite", "host": spec["export"]})
    os.environ["AIRFLOW_CONN_SYNC_STATE"] = json.dumps(
        {"conn_type": "sqlite", "host": str(work / "state.db")}
    )
    (dags / f"{DAG_ID}.py").write_text(
        DAG_TEMPLATE.format(marks=str(marks), dag_id=DAG_ID, sequence_id=spec["sequence_id"])
    )

    from airflow_provider_sequences.testing.dags import (
        load_dag,
        prepare_airflow_home,
        run_dag,
        task_states,
        task_xcom,
    )

    prepare_airflow_home(home, dags)
    database = home / "airflow.db"
    before = _used_bytes(database)
    started = time.time()
    dag_run = run_dag(load_dag(DAG_ID, dags))
    run_s = time.time() - started
    states = task_states(dag_run)
    if set(states.values()) != {"success"}:
        raise RuntimeError(f"the run failed: {states}")

    from airflow.utils.session import create_session

    with create_session() as session:
        ends = {ti.task_id: ti.end_date for ti in dag_run.get_task_instances(session=session)}
    returned = float((marks / "returned").read_text())
    pulled = task_xcom(dag_run, "downstream")
    return {
        "backend": spec["backend"],
        "rows": spec["rows"],
        "added": pulled["added"],
        "not_processed": pulled["not_processed"],
        "push_s": round(ends["enrol"].timestamp() - returned, 3),
        "pull_s": round(pulled["pull_s"], 3),
        "metadata_db_growth_mb": round((_used_bytes(database) - before) / 1e6, 2),
        "xcom_in_db_mb": round(_xcom_bytes(database) / 1e6, 2),
        "store_mb": round(sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "run_s": round(run_s, 1),
    }


def xcom_results(rows: int, backends: list[str], threshold: int) -> dict[str, Any]:
    """Every backend's figures for a night of ``rows`` rows, each in a fresh worker process."""
    path = export(rows)
    results: dict[str, Any] = {"rows": rows, "threshold": threshold, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="bench-xcom-") as work:
        for backend in backends:
            # A fresh simulator per backend: the second run would find everyone enrolled.
            with SimProcess() as sim:
                account = sim.accounts["reply"]
                spec = {
                    "backend": backend,
                    "backend_class": BACKENDS[backend],
                    "threshold": threshold,
                    "rows": rows,
                    "url": account["url"],
                    "api_key": account["api_key"],
                    "sequence_id": account["sequence_id"],
                    "export": str(path),
                    "workdir": str(Path(work) / backend),
                }
                figures = run_worker("bench.xcom_results", spec)
            results["backends"][backend] = figures
            print(json.dumps(figures), flush=True)
    return results


def merge_into(output: Path, scenario: dict[str, Any], *, command: str, duration_s: float) -> None:
    """Put ``scenario`` in ``output`` as ``scenarios.xcom_results``, keeping everything else
    the file holds (the other scenarios' figures come from other, longer runs)."""
    figures: dict[str, Any] = json.loads(output.read_text()) if output.exists() else {}
    figures.setdefault("machine", machine())
    figures.setdefault("scenarios", {})["xcom_results"] = {
        **scenario,
        "command": command,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    figures.setdefault("duration_by_scenario_s", {})["xcom_results"] = round(duration_s, 1)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(figures, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xcom_results", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    parser.add_argument(
        "--threshold", type=int, default=1_000_000, help="bytes; larger results go to the store"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    scenario = xcom_results(args.rows, args.backends, args.threshold)
    command = "python -m bench.xcom_results " + " ".join(argv if argv is not None else sys.argv[1:])
    merge_into(args.output, scenario, command=command.strip(), duration_s=time.perf_counter() - started)
    print(f"merged into {args.output}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        print("BENCH-RESULT " + json.dumps(child(json.loads(sys.argv[1]))), flush=True)
    else:
        sys.exit(main())
