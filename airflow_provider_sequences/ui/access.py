"""Who may see which runs: the DAGs that wrote them, through Airflow's auth manager.

The runs table does not store a DAG id column; each run id is the task's run key,
``{dag_id}.{task_id}[{map_index}]:{dag_run_id}`` (see ``SequenceSyncOperator.run_key``). Dots may
be in DAG ids and in task ids (task groups), so every prefix of the part before ``[`` that ends
at a dot is a candidate, and the candidates that are DAGs Airflow knows are the writers. A user
sees a run when the auth manager lets them read every such DAG. A run id that does not parse, or
whose DAG Airflow no longer knows, needs read access to all DAGs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_RUN_KEY_SEPARATOR = "["


def dag_id_candidates(run_key: str) -> list[str]:
    """The DAG ids a run key may start with, shortest first (empty: not a run key)."""
    head, bracket, rest = run_key.partition(_RUN_KEY_SEPARATOR)
    if not bracket or "]:" not in rest:
        return []
    parts = head.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def _known_dag_ids(candidates: set[str]) -> set[str]:
    """Which of these are DAGs in Airflow's metadata database."""
    if not candidates:
        return set()
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return set(session.scalars(select(DagModel.dag_id).where(DagModel.dag_id.in_(candidates))))


class RunAccess:
    """Answers "may this user read this run?" for one request, asking the auth manager once
    per DAG."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self._dag: dict[str, bool] = {}
        self._all: bool | None = None
        self._writers: dict[str, list[str]] = {}

    def _auth_manager(self) -> Any:
        from airflow.api_fastapi.app import get_auth_manager

        return get_auth_manager()

    def may_read_all_dags(self) -> bool:
        if self._all is None:
            self._all = bool(self._auth_manager().is_authorized_dag(method="GET", user=self.user))
        return self._all

    def _may_read_dag(self, dag_id: str) -> bool:
        if dag_id not in self._dag:
            from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
            from airflow.models.dag import DagModel

            details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
            self._dag[dag_id] = bool(
                self._auth_manager().is_authorized_dag(method="GET", details=details, user=self.user)
            )
        return self._dag[dag_id]

    def learn(self, run_keys: Iterable[str]) -> None:
        """Look the writers of these runs up in one query (call before :meth:`may_read`)."""
        pending = {key: dag_id_candidates(key) for key in run_keys if key not in self._writers}
        known = _known_dag_ids({dag_id for candidates in pending.values() for dag_id in candidates})
        for key, candidates in pending.items():
            self._writers[key] = [dag_id for dag_id in candidates if dag_id in known]

    def may_read(self, run_key: str | None) -> bool:
        if not run_key:
            return False
        if run_key not in self._writers:
            self.learn([run_key])
        writers = self._writers[run_key]
        if not writers:
            return self.may_read_all_dags()
        return all(self._may_read_dag(dag_id) for dag_id in writers)
