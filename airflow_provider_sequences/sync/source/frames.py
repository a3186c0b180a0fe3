"""What every reader yields: frames with unique column names, ``bytes`` as text, indexed
from 0; and the small checks the readers share."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pandas as pd

from airflow_provider_sequences.exceptions import SourceError


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive whole number of rows, got {chunk_size!r}")


#: What an undecodable ``bytes`` value becomes: text no source holds (U+FFFE is a
#: noncharacter), so the prepare stage gives its row a reason instead of sending it.
UNDECODABLE_BYTES = "\ufffeundecodable-bytes:"


def finished(frame: pd.DataFrame, location: str) -> pd.DataFrame:
    """A frame as every reader yields it: names unique, ``bytes`` as text, indexed from 0."""
    check_unique(list(frame.columns), location)
    for name in frame.columns:
        column = frame[name]
        if column.dtype == object and pd.api.types.infer_dtype(column, skipna=True) in ("bytes", "mixed"):
            frame[name] = column.map(_bytes_text, na_action="ignore").astype(object)
    return indexed_from_zero(frame)


def _bytes_text(value: Any) -> Any:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    data = bytes(value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return UNDECODABLE_BYTES + hashlib.blake2b(data, digest_size=8).hexdigest()


def check_unique(names: list[Any], location: str) -> None:
    seen: set[str] = set()
    doubled: list[str] = []
    for name in names:
        text = str(name)
        if text in seen and text not in doubled:
            doubled.append(text)
        seen.add(text)
    if doubled:
        raise SourceError(
            f"{location} has more than one column named {', '.join(map(repr, doubled))}: rename or "
            "drop the extra ones, so that it is clear which one holds the data"
        )


def indexed_from_zero(frame: pd.DataFrame) -> pd.DataFrame:
    index = frame.index
    if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1 and index.name is None):
        frame.index = pd.RangeIndex(len(frame))
    return frame


def one_line(message: str) -> str:
    return " ".join(message.split())


def type_name(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def frame_from_rows(rows: list[Mapping[str, Any]]) -> pd.DataFrame:
    # Object columns keep each value as it came (an int stays an int next to a None) and
    # columns appear in the order their names first appear.
    names: dict[Any, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return pd.DataFrame(
        {name: pd.Series([row.get(name) for row in rows], dtype=object) for name in names},
        index=pd.RangeIndex(len(rows)),
    )
