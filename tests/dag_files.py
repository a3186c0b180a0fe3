"""DAG files that tests write into the DAGs folder, since ``dag.test()`` runs only DAGs from there.

Each helper renders a small DAG module around one sequence-sync operator: its keyword arguments
are written as Python literals (``repr``), so anything a test passes (dicts, lists, strings,
numbers, booleans, ``None``) lands in the file exactly as given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPLY_OPERATOR = "airflow_provider_sequences.operators.reply.ReplyAddContactsToSequenceOperator"
WHIPPY_OPERATOR = "airflow_provider_sequences.operators.whippy.WhippyAddContactsToSequenceOperator"


def _literal(value: Any) -> str:
    text = repr(value)
    # A literal that does not read back as itself (a NaN, an object) would test something else.
    if eval(text, {}) != value:  # noqa: S307 - our own test values, rendered by repr
        raise ValueError(f"{value!r} cannot be written as a Python literal in a DAG file")
    return text


def _kwargs(kwargs: dict[str, Any]) -> str:
    return "".join(f"        {name}={_literal(value)},\n" for name, value in kwargs.items())


def write_operator_dag(
    folder: Path,
    dag_id: str,
    operator: str,
    *,
    task_id: str = "enrol",
    params: dict[str, Any] | None = None,
    upstream_rows: list[dict[str, Any]] | None = None,
    expand_contacts: list[list[dict[str, Any]]] | None = None,
    **kwargs: Any,
) -> Path:
    """Write ``<folder>/<dag_id>.py``: a DAG with one ``operator`` task (dotted class path).

    :param params: the DAG's params (templates read them as ``{{ params.<name> }}``).
    :param upstream_rows: add a ``@task`` named ``export_rows`` returning these rows and pass
        its output as the operator's ``contacts``.
    :param expand_contacts: map the operator over these shards:
        ``.partial(task_id=..., **kwargs).expand(contacts=expand_contacts)``.
    :param kwargs: the operator's keyword arguments, written as literals.
    """
    module, _, name = operator.rpartition(".")
    lines = [
        "from __future__ import annotations",
        "",
        "from datetime import datetime",
        "",
        "from airflow.sdk import DAG, task",
        "",
        f"from {module} import {name}",
        "",
        "with DAG(",
        f"    dag_id={dag_id!r},",
        "    schedule=None,",
        "    start_date=datetime(2026, 1, 1),",
        "    catchup=False,",
        f"    params={_literal(params or {})},",
        "):",
    ]
    contacts = ""
    if upstream_rows is not None:
        lines += [
            "",
            "    @task",
            "    def export_rows():",
            f"        return {_literal(upstream_rows)}",
            "",
        ]
        contacts = "        contacts=export_rows(),\n"
    if expand_contacts is not None:
        body = f"    {name}.partial(\n        task_id={task_id!r},\n{_kwargs(kwargs)}    ).expand(\n"
        body += f"        contacts={_literal(expand_contacts)},\n    )"
    else:
        body = f"    {name}(\n        task_id={task_id!r},\n{contacts}{_kwargs(kwargs)}    )"
    lines.append(body)
    path = folder / f"{dag_id}.py"
    path.write_text("\n".join(lines) + "\n")
    return path
