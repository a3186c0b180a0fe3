"""SharedIdentities: whatever the chunking, and across runs sharing a store, the first key
with a phone, email or external id keeps it and every later key sharing one is refused."""

from __future__ import annotations

import itertools
import re
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_sequences.sync.identities import SharedIdentities
from airflow_provider_sequences.sync.values import Claims

FIELDS = ("phone", "email", "external_id")
# A few values each, so that rows share them often; None and "" are "no value".
VALUES = {name: st.sampled_from([None, "", *(f"{name}-{v}" for v in "abcd")]) for name in FIELDS}
ROW = st.fixed_dictionaries({"key": st.sampled_from([f"k{i}" for i in range(12)]), **VALUES})
RUN = st.lists(ROW, min_size=1, max_size=30, unique_by=lambda row: row["key"])
CUTS = st.lists(st.integers(min_value=1, max_value=30), max_size=4)
DETAIL = re.compile(
    r"its (?P<label>phone|email|external id) (?P<value>\S+) "
    r"(is also on source row (?P<row>\d+), which comes first"
    r"|was sent to Whippy earlier, with key '(?P<holder>\w+)')"
    r": Whippy matches contacts by phone, email or external id, so it would merge the two into one "
    r"contact and may message that person twice; give each row its own value, or drop the duplicate row"
)


class MemoryStore:
    """The claims table, as a list: every batch's claims, oldest first."""

    def __init__(self) -> None:
        self.saved: list[Claims] = []

    def save_claims(self, claims: Claims | None) -> None:
        if claims is not None:
            self.saved.append(claims)

    def iter_claims(self) -> Iterator[Claims]:
        yield from self.saved


def reference(runs: list[list[dict[str, Any]]]) -> list[dict[str, tuple[str, Any]]]:
    """Row by row, run after run: refused key -> (first shared field, earlier row or holder key)."""
    saved: dict[tuple[str, str], str] = {}
    outcomes = []
    for rows in runs:
        claims: dict[tuple[str, str], tuple[str, Any]] = {k: (key, None) for k, key in saved.items()}
        refused: dict[str, tuple[str, Any]] = {}
        for row in rows:
            for name in FIELDS:
                holder = claims.get((name, row[name])) if row[name] else None
                if holder and holder[0] != row["key"] and row["key"] not in refused:
                    refused[row["key"]] = (name, holder[0] if holder[1] is None else holder[1])
            for name in FIELDS:
                if row[name]:
                    claims.setdefault((name, row[name]), (row["key"], row["row"]))
        for (name, value), (key, row) in claims.items():
            if row is not None and key not in refused:
                saved.setdefault((name, value), key)
        outcomes.append(refused)
    return outcomes


def run_chunked(
    identities: SharedIdentities, rows: list[dict[str, Any]], cuts: list[int]
) -> tuple[list[str], dict[str, tuple[str, Any]]]:
    kept: list[str] = []
    refused: dict[str, tuple[str, Any]] = {}
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    for start, end in itertools.pairwise(bounds):
        ok, gone = identities.claim(pd.DataFrame(rows[start:end]).assign(fingerprint="f"))
        if isinstance(identities.store, MemoryStore):
            identities.store.save_claims(identities.claims_of(ok))  # as the engine does once sent
        kept += ok["key"].tolist()
        for key, reason, detail, row in gone[["key", "reason", "detail", "row"]].itertuples(index=False):
            match = DETAIL.fullmatch(detail)
            assert reason == "sharedContact"
            assert match, detail
            assert rows[row]["key"] == key
            name = match["label"].replace(" ", "_")
            assert match["value"] == rows[row][name]
            refused[key] = (name, match["holder"] or int(match["row"]))
    return kept, refused


@settings(max_examples=200, deadline=None)
@given(rows=RUN, cuts=CUTS)
def test_chunked_claims_match_a_row_by_row_reading(rows: list[dict[str, Any]], cuts: list[int]) -> None:
    rows = [{**row, "row": i} for i, row in enumerate(rows)]
    kept, refused = run_chunked(SharedIdentities(FIELDS, service="Whippy"), rows, cuts)
    (expected,) = reference([rows])
    assert refused == expected
    assert kept == [row["key"] for row in rows if row["key"] not in expected]


@settings(max_examples=200, deadline=None)
@given(runs=st.lists(st.tuples(RUN, CUTS), min_size=2, max_size=3))
def test_values_sent_by_an_earlier_run_stay_with_their_key(
    runs: list[tuple[list[dict[str, Any]], list[int]]],
) -> None:
    store = MemoryStore()
    numbered = [[{**row, "row": i} for i, row in enumerate(rows)] for rows, _ in runs]
    expected = reference(numbered)
    for rows, (_, cuts), wanted in zip(numbered, runs, expected, strict=True):
        kept, refused = run_chunked(SharedIdentities(FIELDS, service="Whippy", store=store), rows, cuts)
        assert refused == wanted
        assert kept == [row["key"] for row in rows if row["key"] not in wanted]


def test_a_later_run_names_the_key_that_sent_the_value() -> None:
    store = MemoryStore()
    first = pd.DataFrame({"key": ["a"], "row": [0], "phone": ["+1"], "fingerprint": ["f"]})
    kept, _ = SharedIdentities(["phone"], service="Whippy", store=store).claim(first)
    store.save_claims(SharedIdentities(["phone"], service="Whippy").claims_of(kept))

    later = SharedIdentities(["phone"], service="Whippy", store=store)
    second = pd.DataFrame(
        {"key": ["b", "c", "a"], "row": [0, 1, 2], "phone": ["+1", "+2", "+1"], "fingerprint": "f"}
    )
    kept, refused = later.claim(second)
    assert kept["key"].tolist() == ["c", "a"]  # the value "a" sent before is still its own
    assert refused["key"].tolist() == ["b"]
    assert refused["detail"][0].startswith("its phone +1 was sent to Whippy earlier, with key 'a': ")


def test_loading_the_stored_claims_copies_them_at_most_twice_at_its_peak() -> None:
    # A night with a few changed rows loads every value earlier runs sent (ten million keys
    # with a phone and an email: 320 MB of hashes); np.unique's copies of both fields at once
    # held 3.5 times that at the worker's memory peak; one field at a time holds 1.5 times.
    rng = np.random.default_rng(7)
    store = MemoryStore()
    fields = ("phone", "email")
    for batch in range(40):
        keys = [f"k{batch}-{i}" for i in range(5_000)]
        store.save_claims(Claims(fields, keys, rng.integers(1, 2**63, (5_000, 2), dtype="<u8").tobytes()))
    identities = SharedIdentities(fields, service="Whippy", store=store)
    kept = 40 * 5_000 * len(fields) * 16  # a hash and its key's hash for every value
    tracemalloc.start()
    try:
        identities.claim(
            pd.DataFrame(
                {"key": ["new"], "row": [0], "phone": ["+1"], "email": ["a@b"], "fingerprint": ["f"]}
            )
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * kept, peak
