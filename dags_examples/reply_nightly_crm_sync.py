"""Nightly: enrol new leads from the CRM export into a Reply.io sequence.

The CRM export lands in a database every night (here the ``crm_export`` connection, SQLite
in the demo, PostgreSQL or anything Airflow reaches in production). One task enrols every
lead into the sequence; people enrolled on earlier nights are skipped, rows rejected for
their data are retried once their data changes. A downstream task reads the result.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator

with DAG(
    dag_id="reply_nightly_crm_sync",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={"sequence_id": Param(1001, type="integer", description="The Reply sequence to enrol into")},
    tags=["crm", "reply.io"],
    doc_md=__doc__,
):
    enrol = ReplyAddContactsToSequenceOperator(
        task_id="enrol_new_leads",
        reply_conn_id="reply_default",
        sequence_id="{{ params.sequence_id }}",
        source_conn_id="crm_export",
        sql="""
            SELECT crm_id, email, first_name, last_name, company, job_title, phone, city, country, tier
            FROM crm_contacts
            WHERE lifecycle_stage = 'lead'
        """,
        key_column="crm_id",
        column_map={
            "email": "email",
            "first_name": "firstName",
            "last_name": "lastName",
            "company": "company",
            "job_title": "title",
            "phone": "phone",
            "city": "city",
            "country": "country",
            "tier": "customFields.Tier",
        },
        default_region="US",
        ignore_step_delay=False,
    )

    @task
    def report(result: dict[str, Any]) -> dict[str, int]:
        """What a downstream task sees: the counts, by reason too. The keys are in
        ``result["added"]`` and ``result["not_processed"]``, each up to max_xcom_keys (1M)."""
        reasons: dict[str, int] = result["reasons"]
        print(f"added {result['stats']['added']}; not processed by reason: {reasons}")
        return reasons

    report(enrol.output)
