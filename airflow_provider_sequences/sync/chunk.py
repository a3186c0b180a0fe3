"""A source chunk on its way to the plan: its keys, their first occurrences, fingerprints, and
the full checks of the rows the plan wants.

Keys come first (one column): duplicates and the plan are settled before the per-row checks,
so an unchanged night costs little CPU.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from airflow_provider_sequences.sync.outcomes import MISSING_KEY
from airflow_provider_sequences.sync.prepare import PrepareSpec, prepare_chunk

_Array = np.ndarray[Any, Any]


def key_spec(spec: PrepareSpec) -> PrepareSpec:
    """The spec reduced to the key column, with nothing required."""
    column_map = {c: f for c, f in spec.column_map.items() if c == spec.key_column}
    return replace(spec, column_map=column_map, rules=replace(spec.rules, required=frozenset()))


def fingerprints(chunk: pd.DataFrame, spec: PrepareSpec) -> Any:
    """A stable hash per row of the mapped source values: a changed row has a new one."""
    columns = sorted({spec.key_column, *spec.column_map, *([spec.id_column] if spec.id_column else [])})
    columns = [c for c in columns if c in chunk.columns]
    text = chunk[columns].astype("string").fillna("")
    hashes = pd.util.hash_pandas_object(text, index=False).to_numpy()
    return pd.Series(hashes).map("{:016x}".format).to_numpy()


def key_pass(chunk: pd.DataFrame, keys_only: PrepareSpec, first_row: int) -> tuple[_Array, dict[int, str]]:
    """Each row's key (rows without one: ``row:<n>``), and the details of rows without a key
    by chunk position (the key pass names them by their source position: keep its words)."""
    keyed = prepare_chunk(chunk, keys_only, first_row=first_row)
    keys = np.empty(len(chunk), dtype=object)
    keys[keyed.contacts["row"].to_numpy(dtype="int64") - first_row] = keyed.contacts["key"].to_numpy()
    if keyed.rejected:
        keys[np.asarray(keyed.rejected_rows, dtype="int64") - first_row] = [k for k, _, _ in keyed.rejected]
    key_details = {
        row - first_row: detail
        for (_, reason, detail), row in zip(keyed.rejected, keyed.rejected_rows, strict=True)
        if reason == MISSING_KEY
    }
    return keys, key_details


def prepare_rows(
    rows: pd.DataFrame,
    spec: PrepareSpec,
    positions: _Array,
    keys: _Array,
    row_fingerprints: _Array,
    first_row: int,
    key_details: dict[int, str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The full checks on the rows to handle (``positions`` in the chunk); (contacts to send,
    rejections), named by their keys and source rows."""
    prepared = prepare_chunk(rows.reset_index(drop=True), spec, first_row=0)
    contacts = prepared.contacts
    local = contacts["row"].to_numpy(dtype="int64")
    contacts["row"] = positions[local] + first_row
    contacts["key"] = keys[positions[local]]
    contacts["fingerprint"] = row_fingerprints[positions[local]]
    rejected_local = np.asarray(prepared.rejected_rows, dtype="int64")
    chunk_rows = positions[rejected_local].tolist() if len(rejected_local) else []
    rejected = pd.DataFrame(
        {
            # The key pass named the rows (``row:<n>`` counts from the source's start).
            "key": keys[positions[rejected_local]] if len(rejected_local) else [],
            "reason": [reason for _, reason, _ in prepared.rejected],
            # ``rows`` is a subset of the chunk: a detail naming a row must name its source row.
            "detail": [
                key_details.get(row, detail) if reason == MISSING_KEY else detail
                for (_, reason, detail), row in zip(prepared.rejected, chunk_rows, strict=True)
            ],
            "row": positions[rejected_local] + first_row if len(rejected_local) else [],
            "fingerprint": row_fingerprints[positions[rejected_local]] if len(rejected_local) else [],
        }
    )
    return contacts, rejected
