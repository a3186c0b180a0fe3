"""SharedIdentities: whatever the chunking, the first row with a value keeps it."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_sequences.sync.identities import SharedIdentities

FIELDS = ("phone", "email", "external_id")
# A few values each, so that rows share them often; None and "" are "no value".
VALUES = {name: st.sampled_from([None, "", *(f"{name}-{v}" for v in "abcd")]) for name in FIELDS}

DETAIL = re.compile(
    r"its (?P<label>phone|email|external id) (?P<value>\S+) is also on source row (?P<row>\d+), which comes "
    r"first: Whippy matches contacts by phone, email or external id, so it would merge .*"
)


def reference(rows: list[dict[str, Any]]) -> dict[str, tuple[str, int]]:
    """Row by row: refused key -> (first shared field, the earlier row holding its value)."""
    holders: dict[str, dict[str, int]] = {name: {} for name in FIELDS}
    refused: dict[str, tuple[str, int]] = {}
    for row in rows:
        for name in FIELDS:
            value = row[name]
            if value and value in holders[name] and row["key"] not in refused:
                refused[row["key"]] = (name, holders[name][value])
        for name in FIELDS:
            if row[name]:
                holders[name].setdefault(row[name], row["row"])
    return refused


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.fixed_dictionaries(VALUES), min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=5),
)
def test_chunked_claims_match_a_row_by_row_reading(values: list[dict[str, Any]], cuts: list[int]) -> None:
    rows = [{"key": f"k{i}", "row": i, "fingerprint": f"f{i}", **v} for i, v in enumerate(values)]
    identities = SharedIdentities(FIELDS, service="Whippy")
    kept: list[str] = []
    refused: dict[str, tuple[str, int]] = {}
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    for start, end in itertools.pairwise(bounds):
        chunk = pd.DataFrame(rows[start:end])
        ok, gone = identities.claim(chunk)
        kept += ok["key"].tolist()
        for key, reason, detail, row in gone[["key", "reason", "detail", "row"]].itertuples(index=False):
            assert reason == "sharedContact"
            assert row == int(key[1:])
            match = DETAIL.fullmatch(detail)
            assert match, detail
            name = match["label"].replace(" ", "_")
            refused[key] = (name, int(match["row"]))
            assert match["value"] == rows[row][name]

    expected = reference(rows)
    assert refused == expected
    assert kept == [row["key"] for row in rows if row["key"] not in expected]
