"""Run a DAG for real (``dag.test()`` with the metadata database) and read what its tasks returned."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def prepare_airflow_home(airflow_home: str | Path, dags_folder: str | Path) -> None:
    """Point Airflow at a home and a DAGs folder, and create its metadata database.

    Must run before Airflow is imported: Airflow reads its configuration once. ``dag.test()``
    only runs DAGs serialized from the DAGs folder, hence the folder.
    """
    os.environ["AIRFLOW_HOME"] = str(airflow_home)
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    Path(airflow_home).mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run(  # noqa: S603 - our own interpreter's airflow command
        [str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy(), timeout=300
    )


def load_dag(dag_id: str, dags_folder: str | Path) -> Any:
    """The DAG ``dag_id`` from the folder, failing with the import errors when it does not load."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    bag = DagBag(str(dags_folder))
    if bag.import_errors:
        raise RuntimeError(f"DAGs failed to import: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise KeyError(f"no DAG {dag_id!r} in {dags_folder}")
    return dag


def run_dag(dag: Any, *, run_conf: dict[str, Any] | None = None, logical_date: datetime | None = None) -> Any:
    """Run every task of the DAG once, in this process, like a scheduler would; returns the DagRun."""
    return dag.test(run_conf=run_conf, logical_date=logical_date or datetime.now(timezone.utc))


def task_xcom(dag_run: Any, task_id: str, *, key: str = "return_value", map_index: int = -1) -> Any:
    """What a task of this run pushed to XCom (``None`` if nothing)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=dag_run.run_id, key=key, task_ids=task_id, dag_ids=dag_run.dag_id, map_indexes=map_index
        )
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


def task_states(dag_run: Any) -> dict[str, str]:
    """task id (with ``[map index]`` for mapped ones) -> final state."""
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = dag_run.get_task_instances(session=session)
        return {
            (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state)
            for ti in instances
        }
