"""HashIndex: a set of strings (with a payload) as sorted 64-bit hashes, added to in chunks."""

from __future__ import annotations

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
