"""An auth manager for the view's tests: Airflow's simple one, except that the user ``viewer``
may not read the DAG named in ``HIDDEN_DAG`` (nor "all DAGs"). The simple auth manager's
roles cannot say that: each of them reads every DAG."""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

HIDDEN_DAG = "ui_secret_nightly"


class OneDagHiddenAuthManager(SimpleAuthManager):  # type: ignore[misc]
    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if user.get_name() == "viewer" and (details is None or details.id in (None, HIDDEN_DAG)):
            return False
        return bool(
            super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
        )
