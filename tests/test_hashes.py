"""HashIndex: a set of strings (with a payload) as sorted 64-bit hashes, added to in chunks."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_sequences.sync.hashes import HashIndex, hash_strings


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.lists(st.text(max_size=6), max_size=30), max_size=40))
def test_chunks_added_and_looked_up_behave_like_a_dict(chunks: list[list[str]]) -> None:
    index = HashIndex(np.int32)
    expected: dict[str, int] = {}
    for number, chunk in enumerate(chunks):
        hashes = hash_strings(chunk)
        found, payload = index.lookup(hashes)
        assert found.tolist() == [value in expected for value in chunk]
        assert payload is not None
        assert payload.tolist() == [expected.get(value, 0) for value in chunk]
        new = [value not in expected and value not in chunk[:i] for i, value in enumerate(chunk)]
        index.add(hashes[new], np.full(sum(new), number))
        for value, is_new in zip(chunk, new, strict=True):
            if is_new:
                expected[value] = number
    assert len(index) == len(expected)
    hashes = index.hashes.tolist()
    assert hashes == sorted(set(hashes))  # sorted, each once


def test_hashes_do_not_change_between_processes_or_versions() -> None:
    # Claims stored by one night are compared with hashes a later night computes: a pandas
    # that hashed differently would make every stored claim miss (this test says so first).
    assert hash_strings(["+14155550001", "ada@example.com"]).tolist() == [
        12688429079084477622,
        13380050531990893809,
    ]


def test_merging_a_large_index_copies_it_at_most_twice_at_its_peak() -> None:
    # A first night of ten million keys adds one chunk's hashes at a time, and the last merges
    # join runs of millions: a merge that also made an order array and a sorted copy held the
    # index four times over (320 MB at ten million keys) at the worker's memory peak.
    rng = np.random.default_rng(7)
    chunks = [rng.integers(0, 2**63, 20_000, dtype=np.uint64) for _ in range(64)]
    index = HashIndex()
    tracemalloc.start()
    try:
        for chunk in chunks:
            index.add(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == 64 * 20_000
    hashes = index.hashes
    assert bool(np.all(hashes[1:] >= hashes[:-1]))
    assert peak < 2.5 * len(index) * 8
