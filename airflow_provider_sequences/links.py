"""Extra links from a task: its sequence in the service's web app, its run in the Sequence syncs view."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from airflow.sdk import BaseOperatorLink


class SequenceLink(BaseOperatorLink):
    """Opens the task's sequence in Reply.io or Whippy."""

    name = "Sequence"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = getattr(operator, "sequence_url", None)
        return str(url()) if callable(url) else ""


class SyncReportLink(BaseOperatorLink):
    """Opens the Sequence syncs view at this task's run: its counts and not-processed rows."""

    name = "Sync report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow_provider_sequences.ui.paths import view_path

        service = getattr(operator, "service_name", "")
        # Computed on the worker once the task ran: the account its state is kept under.
        account = getattr(operator, "sync_account", None)
        if not service or not account:
            return ""
        # The run id the operator records its run under (SequenceSyncOperator.run_key).
        run_key = f"{ti_key.dag_id}.{ti_key.task_id}[{ti_key.map_index}]:{ti_key.run_id}"
        query = urlencode(
            {
                "service": service,
                "account": account,
                "sequence": str(operator.sequence_id),
                "run": run_key,
            }
        )
        return f"{view_path('/sequence')}?{query}#not-processed"
