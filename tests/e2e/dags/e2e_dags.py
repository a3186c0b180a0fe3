"""The e2e deployment's DAGs: a nightly fan-out on one account, and one DAG run twice at once.

They read the run's simulators, sequences and shards at parse time from the JSON file named by
``SEQUENCES_E2E_CONFIG``, which the driver writes before any Airflow process starts (every
process, the dag-processor and the workers, inherits the variable). Without it this file
defines no DAG, so the folder imports cleanly anywhere.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator
from airflow_provider_sequences.operators.whippy import WhippyAddContactsToSequenceOperator

#: The sync state's Airflow connection (PostgreSQL), set by the driver.
STATE_CONN_ID = "e2e_state"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
REPLY_COLUMNS = {"email": "email", "first_name": "firstName", "last_name": "lastName", "company": "company"}
WHIPPY_COLUMNS = {"crm_id": "external_id", "phone": "phone", "email": "email", "first_name": "name"}


def _config() -> dict[str, Any] | None:
    path = os.environ.get("SEQUENCES_E2E_CONFIG")
    if not path or not Path(path).is_file():
        return None
    config: dict[str, Any] = json.loads(Path(path).read_text())
    return config


def _whippy(config: dict[str, Any]) -> dict[str, Any]:
    """What every Whippy task shares: the channel, the state, and waiting in the triggerer."""
    return {
        "sequence_id": config["whippy_sequence"],
        "from_channel": config["whippy_channel"],
        "column_map": WHIPPY_COLUMNS,
        "default_region": "US",
        "state_conn_id": STATE_CONN_ID,
        "deferrable": True,
        "poll_interval": 1.0,
        "enrollment_timeout": 180.0,
    }


config = _config()
if config is not None:
    # Reply over 4 mapped shards and Whippy over 2, all on one account and one sequence each.
    with DAG(dag_id="e2e_fanout", schedule=None, start_date=START, catchup=False, max_active_runs=1):
        ReplyAddContactsToSequenceOperator.partial(
            task_id="reply",
            sequence_id=config["reply_sequence"],
            column_map=REPLY_COLUMNS,
            key_column="crm_id",
            batch_size=config["reply_batch"],
            state_conn_id=STATE_CONN_ID,
        ).expand(source_path=config["reply_shards"])
        WhippyAddContactsToSequenceOperator.partial(
            task_id="whippy", batch_size=config["whippy_batch"], **_whippy(config)
        ).expand(source_path=config["whippy_shards"])

    # One night's export, triggered twice: the two runs overlap.
    with DAG(dag_id="e2e_overlap", schedule=None, start_date=START, catchup=False, max_active_runs=2):
        ReplyAddContactsToSequenceOperator(
            task_id="reply",
            sequence_id=config["reply_sequence"],
            source_path=config["overlap_reply"],
            column_map=REPLY_COLUMNS,
            key_column="crm_id",
            batch_size=config["overlap_reply_batch"],
            state_conn_id=STATE_CONN_ID,
        )
        WhippyAddContactsToSequenceOperator(
            task_id="whippy",
            source_path=config["overlap_whippy"],
            batch_size=config["overlap_whippy_batch"],
            **_whippy(config),
        )
