"""What a finished run tells: the summary in the task log, the share of keys that failed, and
its OpenLineage facets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from airflow_provider_sequences.sync.outcomes import CONTACT_ALREADY_IN_SEQUENCE, ENROLLMENT_UNCONFIRMED


def log_result(log: Any, what: str, stats: Mapping[str, Any], reasons: Counter[str]) -> None:
    """The run's counts, and the not-processed keys by reason (counts only, never values)."""
    log.info(
        "%s: %d rows; %d added, %d not processed, %d unchanged, %d duplicates; "
        "%d requests (%d write, %d read)",
        what,
        stats["rows"],
        stats["added"],
        stats["not_processed"],
        stats.get("unchanged", 0),
        stats["duplicates"],
        stats["requests"],
        stats["write_requests"],
        stats["read_requests"],
    )
    if reasons:
        width = max(len(reason) for reason in reasons)
        table = "\n".join(f"  {reason:<{width}}  {count:>8,}" for reason, count in reasons.most_common())
        log.info("Not processed, by reason:\n%s", table)


def failed_keys(stats: Mapping[str, Any], reasons: Counter[str]) -> tuple[int, int]:
    """(keys that failed, distinct keys read). Contacts accepted but not read back yet
    (wait_for_enrollment=False) are on their way, and contacts already in the sequence are
    where they should be: neither is a failure."""
    keys = int(stats["rows"] - stats["duplicates"])
    failed = int(stats["not_processed"] - reasons[ENROLLMENT_UNCONFIRMED])
    failed -= reasons[CONTACT_ALREADY_IN_SEQUENCE]
    return failed, keys


def lineage_facets(operator: Any, done: Mapping[str, Any]) -> Any:
    """OpenLineage: the source read, the sequence written, column lineage, rows added (``done``:
    what the finished run knew: service, API URL, account, rows added)."""
    from airflow_provider_sequences.lineage import file_dataset, sequence_lineage, sql_lineage

    inputs: list[Any] = []
    job_facets: dict[str, Any] = {}
    if operator.sql is not None:
        source = sql_lineage(str(operator.source_conn_id), operator.sql)
        inputs, job_facets = list(source.inputs), dict(source.job_facets)
    elif operator.source_path is not None:
        inputs = [file_dataset(str(operator.source_path))]
    return sequence_lineage(
        service=done.get("service") or operator.service_name,
        api_url=done.get("api_url", ""),
        account=done.get("account") or operator.connection_id(),
        sequence_id=operator.sequence_id,
        column_map=operator.column_map,
        inputs=inputs,
        added=done.get("added"),
        job_facets=job_facets,
    )
