"""Nightly: enrol new leads from the CRM export into a Whippy SMS sequence.

Whippy enrols in the background and silently ignores contacts it cannot use, so the task
reads the step back and reports those as ``notEnrolled``. ``deferrable=True`` does that wait
in the triggerer, without holding a worker slot.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_sequences.operators.whippy import WhippyAddContactsToSequenceOperator

with DAG(
    dag_id="whippy_nightly_crm_sync",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "sequence_id": Param("", type="string", description="The Whippy sequence to enrol into"),
        "from_channel": Param("+15555550100", type="string", description="Phone of the sending channel"),
    },
    tags=["crm", "whippy"],
    doc_md=__doc__,
):
    WhippyAddContactsToSequenceOperator(
        task_id="enrol_new_leads",
        whippy_conn_id="whippy_default",
        sequence_id="{{ params.sequence_id }}",
        from_channel="{{ params.from_channel }}",
        source_conn_id="crm_export",
        sql="""
            SELECT crm_id, email, first_name || ' ' || last_name AS full_name, phone, city, country
            FROM crm_contacts
            WHERE lifecycle_stage = 'lead'
        """,
        column_map={
            "crm_id": "external_id",
            "phone": "phone",
            "email": "email",
            "full_name": "name",
            "city": "address.city",
            "country": "address.country",
        },
        default_region="US",
        deferrable=True,
        poll_interval=1.0,
        enrollment_timeout=300,
    )
