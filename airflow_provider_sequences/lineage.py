"""OpenLineage facets of a sync: what it read, which sequence it wrote, and how columns flow.

Imported only by the operators' ``get_openlineage_facets_on_complete``, which the
apache-airflow-providers-openlineage listener calls when it is installed; nothing here is
needed otherwise.

- inputs: the tables of ``sql`` (parsed by the SQL parser the common-sql operators use, in
  the source connection's namespace), or the file of ``source_path``; rows handed over by an
  upstream task (``contacts``) are that task's output, not a dataset of this one;
- output: the sequence, namespace ``<service>://<API host>``, name
  ``<account>/sequences/<sequence id>`` (the account the hook acts as: ``user-42``,
  ``org-7``, or the connection id when unknown), with a column-lineage facet from ``column_map`` and
  the rows added as output statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.openlineage.facet import (
    ColumnLineageDatasetFacet,
    Dataset,
    Fields,
    InputField,
    OutputDataset,
    OutputStatisticsOutputDatasetFacet,
    SQLJobFacet,
)
from airflow.providers.openlineage.extractors import OperatorLineage


def sql_lineage(conn_id: str, sql: str) -> OperatorLineage:
    """The tables ``sql`` reads, in the namespace of connection ``conn_id``, and the SQL job facet."""
    from airflow.providers.openlineage.sqlparser import DatabaseInfo, SQLParser
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    hook = connection.get_hook()
    info = None
    if hasattr(hook, "get_openlineage_database_info"):
        info = hook.get_openlineage_database_info(connection)
    if info is not None:
        parser = SQLParser(
            dialect=hook.get_openlineage_database_dialect(connection),
            default_schema=hook.get_openlineage_default_schema(),
        )
        return parser.generate_openlineage_metadata_from_sql(
            sql=sql, hook=hook, database_info=info, use_connection=False
        )
    # Hooks without OpenLineage support (SQLite): the connection's type and host, and the
    # tables as the query names them (there is no schema to default to).
    namespace = SQLParser.create_namespace(
        DatabaseInfo(scheme=connection.conn_type or "unknown", authority=connection.host or None)
    )
    parsed = SQLParser(dialect="generic").parse(SQLParser.split_sql_string(sql))
    tables = parsed.in_tables if parsed else []
    inputs = [
        Dataset(namespace=namespace, name=".".join(p for p in (t.database, t.schema, t.name) if p))
        for t in tables
    ]
    return OperatorLineage(inputs=inputs, job_facets={"sql": SQLJobFacet(query=SQLParser.normalize_sql(sql))})


def file_dataset(path: str) -> Dataset:
    """A file as OpenLineage names it: ``file`` + the path, or ``<scheme>://<bucket>`` + the key."""
    parts = urlsplit(path)
    if parts.scheme in ("", "file"):
        return Dataset(namespace="file", name=parts.path or path)
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/"))


def sequence_lineage(
    *,
    service: str,
    api_url: str,
    account: str,
    sequence_id: Any,
    column_map: Mapping[str, str],
    inputs: list[Dataset],
    added: int | None,
    job_facets: Mapping[str, Any] | None = None,
) -> OperatorLineage:
    """The lineage of one sync into a sequence."""
    host = urlsplit(api_url).netloc or api_url
    # The hook's account (``reply:<host>:user-42``): the namespace already says service and host.
    account = account.removeprefix(f"{service}:{host}:")
    facets: dict[str, Any] = {}
    if column_map and inputs:
        source = inputs[0]
        facets["columnLineage"] = ColumnLineageDatasetFacet(
            fields={
                target: Fields(
                    inputFields=[InputField(namespace=source.namespace, name=source.name, field=column)],
                    transformationType="IDENTITY",
                    transformationDescription="normalised (emails lowercased, phones E.164)",
                )
                for column, target in column_map.items()
            }
        )
    output_facets: dict[str, Any] = {}
    if added is not None:
        output_facets["outputStatistics"] = OutputStatisticsOutputDatasetFacet(rowCount=added)
    output = OutputDataset(
        namespace=f"{service}://{host}",
        name=f"{account}/sequences/{sequence_id}",
        facets=facets,
        outputFacets=output_facets,
    )
    return OperatorLineage(inputs=inputs, outputs=[output], job_facets=dict(job_facets or {}))
