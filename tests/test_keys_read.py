"""KeysRead: each key's first row in a run, whether the key was read before or after the run
read the enrolled pass, and a bit per enrolled key rather than a hash."""

from __future__ import annotations

import tracemalloc
from collections.abc import Collection, Iterator

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_sequences.sync.enrolled import EnrolledKeys
from airflow_provider_sequences.sync.hashes import hash_strings
from airflow_provider_sequences.sync.keys_read import KeysRead


class EnrolledStore:
    """The state as the enrolled pass reads it: these keys enrolled by an earlier run."""

    def __init__(self, enrolled: list[str], last_run_rows: int | None = None) -> None:
        self.enrolled = enrolled
        self.rows = last_run_rows

    def last_run_rows(self) -> int | None:
        return self.rows

    def key_count(self) -> int:
        return len(self.enrolled)

    def live_runs(self) -> set[str]:
        return set()

    def enrolled_keys(self, excluding: Collection[str], slice_size: int = 100_000) -> Iterator[list[str]]:
        for start in range(0, len(self.enrolled), slice_size):
            yield self.enrolled[start : start + slice_size]


def keys_read(enrolled: list[str], last_run_rows: int | None = None) -> KeysRead:
    return KeysRead(EnrolledKeys(EnrolledStore(enrolled, last_run_rows), "run-2", enabled=True))  # type: ignore[arg-type]


KEYS = [f"k{i}" for i in range(12)]


@settings(max_examples=200, deadline=None)
@given(
    enrolled=st.sets(st.sampled_from(KEYS)),
    chunks=st.lists(st.lists(st.sampled_from(KEYS), max_size=8), max_size=8),
    read_after=st.integers(min_value=0, max_value=60),
)
def test_first_rows_are_those_of_a_set_read_row_by_row(
    enrolled: set[str], chunks: list[list[str]], read_after: int
) -> None:
    # last_run_rows * 2% is when the pass is read: keys come before it, after it, or both.
    keys = keys_read(sorted(enrolled), last_run_rows=read_after * 50)
    seen: set[str] = set()
    rows_read = 0
    for chunk in chunks:
        rows_read += len(chunk)
        first, first_enrolled = keys.take(hash_strings(chunk), rows_read)
        expected = []
        for key in chunk:
            expected.append(key not in seen)
            seen.add(key)
        assert first.tolist() == expected
        pass_read = rows_read >= read_after
        assert first_enrolled.tolist() == [
            f and pass_read and k in enrolled for k, f in zip(chunk, expected, strict=True)
        ]
    assert keys.seen(hash_strings(KEYS)).tolist() == [key in seen for key in KEYS]


def test_an_unchanged_night_holds_a_bit_per_key_not_a_hash() -> None:
    # Ten million keys: 10 MB of flags, where a hash per key read held 80 MB (and searching it
    # cost seconds of the night).
    enrolled = [f"crm-{i}" for i in range(200_000)]
    keys = keys_read(enrolled, last_run_rows=len(enrolled))
    chunks = [hash_strings(enrolled[start : start + 20_000]) for start in range(0, len(enrolled), 20_000)]
    keys.take(chunks[0], 20_000)  # the first chunk reads the pass (2% of 200,000 is 4,000 rows)
    tracemalloc.start()
    try:
        for number, chunk in enumerate(chunks[1:], start=2):
            first, first_enrolled = keys.take(chunk, number * 20_000)
            assert first.all()
            assert first_enrolled.all()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 0.5 * len(enrolled)
    assert bool(np.all(keys.seen(hash_strings(enrolled))))
