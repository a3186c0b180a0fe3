"""Enrol contacts handed over by an upstream task (for example a scoring model's picks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator

with DAG(
    dag_id="reply_from_upstream_task",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"sequence_id": Param(1001, type="integer")},
    tags=["reply.io"],
    doc_md=__doc__,
):

    @task
    def pick_hot_leads() -> list[dict[str, Any]]:
        """Any upstream logic; what it returns is the operator's ``contacts``."""
        return [
            {"email": "ada@example.com", "first_name": "Ada", "score": 0.97},
            {"email": "grace@example.com", "first_name": "Grace", "score": 0.91},
            {"email": "not-an-email", "first_name": "Typo", "score": 0.88},
        ]

    ReplyAddContactsToSequenceOperator(
        task_id="enrol_hot_leads",
        sequence_id="{{ params.sequence_id }}",
        contacts=pick_hot_leads(),
        column_map={"email": "email", "first_name": "firstName", "score": "customFields.Score"},
    )
