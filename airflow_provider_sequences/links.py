"""Extra links from a task to its sequence in the service's web app."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink


class SequenceLink(BaseOperatorLink):
    """Opens the task's sequence in Reply.io or Whippy."""

    name = "Sequence"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = getattr(operator, "sequence_url", None)
        return str(url()) if callable(url) else ""
