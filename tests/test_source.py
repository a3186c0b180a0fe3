"""The source stage on real files and real databases: chunking, types, laziness, errors."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from airflow_provider_sequences.sync.source import (
    SourceError,
    read_file_chunks,
    read_sql_chunks,
    records_chunks,
)

ROWS = 2_500
CHUNK = 1_000


def contact_rows(count: int) -> list[dict[str, Any]]:
    return [
        {"contact_id": f"c{i:05d}", "Email Address": f"person{i}@example.com", "phone": f"+1415555{i:04d}"}
        for i in range(count)
    ]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    header = ",".join(rows[0])
    lines = [header, *(",".join(str(value) for value in row.values()) for row in rows)]
    data = ("\n".join(lines) + "\n").encode()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]], row_group_size: int = 300) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


WRITERS = {
    "contacts.csv": write_csv,
    "contacts.csv.gz": write_csv,
    "contacts.parquet": write_parquet,
    "contacts.jsonl": write_jsonl,
    "contacts.jsonl.gz": write_jsonl,
}


def assert_chunked(chunks: list[pd.DataFrame], rows: list[dict[str, Any]], chunk_size: int) -> None:
    expected_sizes = [min(chunk_size, len(rows) - start) for start in range(0, len(rows), chunk_size)]
    assert [len(chunk) for chunk in chunks] == expected_sizes
    for chunk in chunks:
        assert chunk.index.equals(pd.RangeIndex(len(chunk)))
        assert list(chunk.columns) == list(rows[0])
    together = pd.concat(chunks, ignore_index=True)
    assert together.astype(str).to_dict("records") == [
        {key: str(value) for key, value in row.items()} for row in rows
    ]


def source_message(excinfo: pytest.ExceptionInfo[SourceError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# Files: chunking in every format


@pytest.mark.parametrize("name", list(WRITERS))
def test_file_is_read_in_order_in_chunks_of_chunk_size(tmp_path, name):
    rows = contact_rows(ROWS)
    path = WRITERS[name](tmp_path / name, rows)

    chunks = list(read_file_chunks(path, chunk_size=CHUNK))

    assert [len(chunk) for chunk in chunks] == [1_000, 1_000, 500]
    assert_chunked(chunks, rows, CHUNK)


def test_parquet_with_many_row_groups_is_read_batch_by_batch(tmp_path):
    rows = contact_rows(ROWS)
    path = write_parquet(tmp_path / "contacts.parquet", rows, row_group_size=300)
    assert pq.ParquetFile(path).num_row_groups == 9

    chunks = list(read_file_chunks(str(path), chunk_size=CHUNK))

    assert_chunked(chunks, rows, CHUNK)


def test_chunk_size_larger_than_the_file_gives_one_chunk(tmp_path):
    rows = contact_rows(7)
    path = write_csv(tmp_path / "contacts.csv", rows)

    chunks = list(read_file_chunks(path, chunk_size=CHUNK))

    assert_chunked(chunks, rows, CHUNK)
    assert len(chunks) == 1


# Files: values and types


def test_csv_keeps_every_value_as_text(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text(
        "Contact ID,Phone Number,intl,E-mail\n"
        "00123,+4155550123,0044 20 7946 0958,a@example.com\n"
        "123456789012345678901234567890,0044207946095,,b@example.com\n"
    )

    (chunk,) = read_file_chunks(path, chunk_size=10)

    assert list(chunk.columns) == ["Contact ID", "Phone Number", "intl", "E-mail"]
    assert chunk["Contact ID"].tolist() == ["00123", "123456789012345678901234567890"]
    assert chunk["Phone Number"].tolist() == ["+4155550123", "0044207946095"]
    assert chunk.loc[0, "intl"] == "0044 20 7946 0958"
    assert pd.isna(chunk.loc[1, "intl"])


def test_jsonl_keeps_json_types(tmp_path):
    path = tmp_path / "contacts.jsonl"
    path.write_text(
        '{"id": 12345678901234567890, "score": 1, "phone": "0044207946095", "vip": true, "tags": ["a"]}\n'
        "\n"
        '{"id": 2, "score": null, "phone": null, "vip": false, "extra": {"x": 1}}\n'
    )

    (chunk,) = read_file_chunks(path, chunk_size=10)

    assert list(chunk.columns) == ["id", "score", "phone", "vip", "tags", "extra"]
    records = chunk.to_dict("records")
    assert records[0]["id"] == 12345678901234567890
    assert type(records[0]["score"]) is int
    assert records[0]["score"] == 1
    assert records[1]["score"] is None
    assert records[0]["phone"] == "0044207946095"
    assert records[1]["phone"] is None
    assert records[0]["vip"] is True
    assert records[0]["tags"] == ["a"]
    assert records[0]["extra"] is None
    assert records[1]["extra"] == {"x": 1}


def test_parquet_keeps_integers_next_to_nulls(tmp_path):
    path = tmp_path / "contacts.parquet"
    table = pa.table({"id": pa.array([4155550123, None, 3], pa.int64()), "name": ["a", None, "c"]})
    pq.write_table(table, path)

    (chunk,) = read_file_chunks(path, chunk_size=10)

    assert chunk["id"].tolist() == [4155550123, None, 3]
    assert type(chunk["id"].tolist()[0]) is int
    assert chunk.loc[0, "name"] == "a"
    assert pd.isna(chunk.loc[1, "name"])


def test_parquet_written_by_pandas_with_a_named_index_keeps_it_as_a_column(tmp_path):
    path = tmp_path / "contacts.parquet"
    frame = pd.DataFrame({"contact_id": ["x9", "x3", "x7"], "email": ["a@x.io", "b@x.io", "c@x.io"]})
    frame.set_index("contact_id").to_parquet(path)

    chunks = list(read_file_chunks(path, chunk_size=2))

    assert [chunk.index.equals(pd.RangeIndex(len(chunk))) for chunk in chunks] == [True, True]
    together = pd.concat(chunks, ignore_index=True)
    assert together.to_dict("records") == frame.to_dict("records")


# Files: where they come from


def test_object_storage_path_is_read_through_open(tmp_path):
    from airflow.sdk import ObjectStoragePath

    rows = contact_rows(ROWS)
    csv = write_csv(tmp_path / "contacts.csv.gz", rows)
    parquet = write_parquet(tmp_path / "contacts.parquet", rows)

    for local in (csv, parquet):
        path = ObjectStoragePath(f"file://{local}")
        assert_chunked(list(read_file_chunks(path, chunk_size=CHUNK)), rows, CHUNK)


def test_object_storage_path_to_a_missing_file(tmp_path):
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(f"file://{tmp_path}/nowhere.csv")

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo) == f"could not open file://{tmp_path}/nowhere.csv: no such file"


def test_url_string_is_opened_through_fsspec(tmp_path):
    rows = contact_rows(5)
    path = write_csv(tmp_path / "contacts.csv", rows)

    chunks = list(read_file_chunks(f"file://{path}", chunk_size=2, storage_options={}))

    assert_chunked(chunks, rows, 2)


def test_something_that_is_not_a_path_is_refused():
    with pytest.raises(SourceError, match="cannot read a file from a int: expected a path, a URL string"):
        read_file_chunks(42, chunk_size=10)


def test_stopping_early_closes_the_file(tmp_path):
    rows = contact_rows(ROWS)
    for name in ("contacts.csv.gz", "contacts.parquet", "contacts.jsonl"):
        path = CountingPath(WRITERS[name](tmp_path / name, rows))
        chunks = read_file_chunks(path, chunk_size=CHUNK)
        next(chunks)
        assert path.handle is not None
        assert not path.handle.closed

        chunks.close()

        assert path.handle.closed


def test_storage_options_are_refused_for_a_local_path(tmp_path):
    path = write_csv(tmp_path / "contacts.csv", contact_rows(1))

    with pytest.raises(SourceError, match="storage_options apply only to a URL string"):
        read_file_chunks(path, chunk_size=10, storage_options={"anon": True})


def test_zip_holding_one_csv(tmp_path):
    rows = contact_rows(30)
    inner = write_csv(tmp_path / "inner.csv", rows)
    path = tmp_path / "export.csv.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inner, "hubspot-export.csv")

    assert_chunked(list(read_file_chunks(path, chunk_size=7)), rows, 7)


def test_zip_holding_two_files_is_refused(tmp_path):
    path = tmp_path / "export.csv.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.csv", "a\n1\n")
        archive.writestr("b.csv", "a\n2\n")

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo) == (
        f"could not read {path}: the zip archive holds 2 files; expected exactly one"
    )


# Files: format


@pytest.mark.parametrize(
    ("name", "writer"),
    [
        ("CONTACTS.CSV", write_csv),
        ("contacts.CSV.GZ", write_csv),
        ("contacts.pq", write_parquet),
        ("contacts.PARQUET", write_parquet),
        ("contacts.ndjson", write_jsonl),
        ("contacts.json", write_jsonl),
    ],
)
def test_format_follows_the_file_name(tmp_path, name, writer):
    rows = contact_rows(3)
    path = writer(tmp_path / name, rows)

    assert_chunked(list(read_file_chunks(path, chunk_size=2)), rows, 2)


@pytest.mark.parametrize(
    ("file_format", "writer"), [("csv", write_csv), ("parquet", write_parquet), ("JSONL", write_jsonl)]
)
def test_file_format_overrides_the_name(tmp_path, file_format, writer):
    rows = contact_rows(3)
    path = writer(tmp_path / "export.dat", rows)

    assert_chunked(list(read_file_chunks(path, chunk_size=2, file_format=file_format)), rows, 2)


@pytest.mark.parametrize("name", ["contacts.tsv", "contacts.xlsx", "contacts", "contacts.csv.bak"])
def test_unknown_suffix_names_the_formats_and_the_parameter(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")

    with pytest.raises(SourceError) as excinfo:
        read_file_chunks(path, chunk_size=10)

    message = source_message(excinfo)
    assert message.startswith(f"cannot tell the format of {path} from its name")
    assert "pass file_format as one of 'csv', 'parquet', 'jsonl'" in message


def test_unknown_file_format_is_refused(tmp_path):
    with pytest.raises(SourceError, match=r"unknown file_format 'xlsx'; expected one of 'csv', 'parquet'"):
        read_file_chunks(tmp_path / "contacts.csv", chunk_size=10, file_format="xlsx")


def test_compressed_parquet_is_refused(tmp_path):
    with pytest.raises(SourceError, match="a Parquet file compresses its own data"):
        read_file_chunks(tmp_path / "contacts.parquet.gz", chunk_size=10)


@pytest.mark.parametrize("chunk_size", [0, -5, 2.5, True])
def test_chunk_size_must_be_a_positive_integer(tmp_path, chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive whole number"):
        read_file_chunks(tmp_path / "contacts.csv", chunk_size=chunk_size)
    with pytest.raises(ValueError, match="chunk_size must be a positive whole number"):
        records_chunks([], chunk_size=chunk_size)
    with pytest.raises(ValueError, match="chunk_size must be a positive whole number"):
        read_sql_chunks(sqlite3.connect(":memory:"), "SELECT 1", chunk_size=chunk_size)


# Files: errors


def test_missing_file(tmp_path):
    path = tmp_path / "exports" / "contacts.csv"

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo) == f"could not open {path}: no such file"
    assert isinstance(excinfo.value.__cause__, FileNotFoundError)


def test_directory_instead_of_a_file(tmp_path):
    path = tmp_path / "contacts.csv"
    path.mkdir()

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo) == f"could not open {path}: it is a directory, not a file"


def test_csv_named_parquet(tmp_path):
    path = write_csv(tmp_path / "contacts.parquet", contact_rows(10))

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    message = source_message(excinfo)
    assert message.startswith(f"could not read {path} as Parquet: ")
    assert "magic bytes not found" in message
    assert isinstance(excinfo.value.__cause__, pa.ArrowInvalid)


def test_binary_file_named_csv(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20)

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    message = source_message(excinfo)
    assert message.startswith(f"could not read {path} as CSV: it is not UTF-8 text (")
    assert isinstance(excinfo.value.__cause__, UnicodeDecodeError)


def test_parquet_file_named_csv(tmp_path):
    path = write_parquet(tmp_path / "contacts.csv", contact_rows(10))

    with pytest.raises(SourceError, match=f"could not read {path} as CSV: it is not UTF-8 text"):
        list(read_file_chunks(path, chunk_size=10))


def test_csv_with_a_ragged_row(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("email,phone\na@example.com,+1415\nb@example.com,+1416,surprise\n")

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    message = source_message(excinfo)
    assert message.startswith(f"could not read {path} as CSV: ")
    assert "Expected 2 fields in line 3, saw 3" in message


def test_plain_csv_named_gz(tmp_path):
    path = write_csv(tmp_path / "contacts.csv", contact_rows(10)).rename(tmp_path / "contacts.csv.gz")

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo).startswith(f"could not read {path} as CSV: Not a gzipped file")


def test_empty_csv_file_has_no_header(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_bytes(b"")

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo) == (
        f"could not read {path} as CSV: the file is empty, not even a header row"
    )


def test_malformed_json_line(tmp_path):
    path = tmp_path / "contacts.jsonl"
    path.write_text('{"email": "a@example.com"}\n{"email": "b@example.com",\n{"email": "c@example.com"}\n')

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo) == (
        f"could not read {path} as JSON Lines: line 2 is not valid JSON "
        f"(Expecting property name enclosed in double quotes at column 27)"
    )
    assert isinstance(excinfo.value.__cause__, json.JSONDecodeError)


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "contacts.json"
    path.write_text('[{"email": "a@example.com"}]\n')

    with pytest.raises(SourceError) as excinfo:
        list(read_file_chunks(path, chunk_size=10))

    assert source_message(excinfo) == (
        f"could not read {path} as JSON Lines: line 1 holds a JSON array, not an object; "
        f"JSON Lines has one object per line"
    )


def test_error_after_good_chunks_comes_when_reached(tmp_path):
    path = tmp_path / "contacts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in contact_rows(25)) + "oops\n")
    chunks = read_file_chunks(path, chunk_size=10)

    assert len(next(chunks)) == 10
    assert len(next(chunks)) == 10
    with pytest.raises(SourceError, match="line 26 is not valid JSON"):
        next(chunks)


# Files: empty


def test_header_only_csv_gives_one_empty_frame_with_columns(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_text("email,phone\n")

    (chunk,) = read_file_chunks(path, chunk_size=10)

    assert chunk.empty
    assert list(chunk.columns) == ["email", "phone"]


def test_empty_parquet_gives_one_empty_frame_with_columns(tmp_path):
    path = tmp_path / "contacts.parquet"
    pq.write_table(pa.table({"email": pa.array([], pa.string()), "phone": pa.array([], pa.string())}), path)

    (chunk,) = read_file_chunks(path, chunk_size=10)

    assert chunk.empty
    assert list(chunk.columns) == ["email", "phone"]


def test_empty_jsonl_gives_one_empty_frame(tmp_path):
    path = tmp_path / "contacts.jsonl"
    path.write_text("\n")

    (chunk,) = read_file_chunks(path, chunk_size=10)

    assert chunk.empty


# Files: memory stays flat


class CountingPath:
    """A duck-typed storage path whose files count the bytes read from disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.bytes_read = 0
        self.handle: io.BufferedReader | None = None

    def __str__(self) -> str:
        return f"counting://{self.path}"

    def open(self, mode: str) -> io.BufferedReader:
        assert mode == "rb"
        counter = self

        class CountingFileIO(io.FileIO):
            def readinto(self, buffer: Any) -> int | None:
                count = super().readinto(buffer)
                counter.bytes_read += count or 0
                return count

            def readall(self) -> bytes:
                data = super().readall()
                counter.bytes_read += len(data)
                return data

        self.handle = io.BufferedReader(CountingFileIO(self.path, "rb"))
        return self.handle


def big_rows(count: int) -> list[dict[str, Any]]:
    return [
        {"contact_id": str(i), "email": f"person{i}@example.com", "phone": "+14155550123"}
        for i in range(count)
    ]


def test_large_csv_is_read_lazily_in_bounded_chunks(tmp_path):
    total = 200_000
    path = CountingPath(write_csv(tmp_path / "contacts.csv", big_rows(total)))
    size = path.path.stat().st_size

    chunks = read_file_chunks(path, chunk_size=10_000)
    first = next(chunks)

    assert len(first) == 10_000
    assert path.bytes_read < size / 10
    sizes = [len(first), *(len(chunk) for chunk in chunks)]
    assert max(sizes) == 10_000
    assert sum(sizes) == total
    assert path.bytes_read >= size


def test_truncating_the_file_after_the_first_chunk_shows_the_rest_was_not_read(tmp_path):
    total = 200_000
    path = write_csv(tmp_path / "contacts.csv", big_rows(total))
    kept = b"".join(path.read_bytes().splitlines(keepends=True)[: 1 + 30_000])

    chunks = read_file_chunks(path, chunk_size=10_000)
    first = next(chunks)
    with path.open("r+b") as handle:
        handle.truncate(len(kept))
    rest = list(chunks)

    assert len(first) == 10_000
    assert all(len(chunk) <= 10_000 for chunk in rest)
    # Only the rows still in the file (and what sat in the reader's buffer) come through.
    assert 30_000 <= len(first) + sum(len(chunk) for chunk in rest) < 40_000


def test_large_parquet_is_read_lazily(tmp_path):
    total = 200_000
    path = CountingPath(write_parquet(tmp_path / "contacts.parquet", big_rows(total), row_group_size=10_000))
    size = path.path.stat().st_size

    chunks = read_file_chunks(path, chunk_size=10_000)
    first = next(chunks)

    assert len(first) == 10_000
    # pyarrow pre-buffers every row group by default, which reads the whole file at once.
    assert path.bytes_read < size / 4
    sizes = [len(first), *(len(chunk) for chunk in chunks)]
    assert max(sizes) == 10_000
    assert sum(sizes) == total
    assert path.bytes_read > size / 2


# SQL


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as connection:
        connection.execute('CREATE TABLE contacts (contact_id TEXT, "Email Address" TEXT, phone TEXT)')
        connection.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?)", [tuple(row.values()) for row in contact_rows(ROWS)]
        )
        connection.execute("CREATE TABLE nobody (email TEXT, phone TEXT)")
    connection.close()
    return path


@pytest.fixture
def sqlite_connection(database):
    connection = sqlite3.connect(database)
    yield connection
    connection.close()


@pytest.fixture
def engine(database):
    engine = sa.create_engine(f"sqlite:///{database}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite3", "sqlalchemy"])
def connection(request):
    return request.getfixturevalue("sqlite_connection" if request.param == "sqlite3" else "engine")


def test_query_is_read_in_chunks(connection):
    chunks = list(read_sql_chunks(connection, "SELECT * FROM contacts ORDER BY contact_id", chunk_size=CHUNK))

    assert_chunked(chunks, contact_rows(ROWS), CHUNK)


def test_query_parameters_are_bound_by_the_driver(sqlite_connection, engine):
    sql = "SELECT contact_id FROM contacts WHERE contact_id < ? ORDER BY contact_id"
    (chunk,) = read_sql_chunks(sqlite_connection, sql, chunk_size=CHUNK, parameters=["c00003"])
    assert chunk["contact_id"].tolist() == ["c00000", "c00001", "c00002"]

    sql = "SELECT contact_id FROM contacts WHERE contact_id < :last ORDER BY contact_id"
    (chunk,) = read_sql_chunks(engine, sql, chunk_size=CHUNK, parameters={"last": "c00002"})
    assert chunk["contact_id"].tolist() == ["c00000", "c00001"]


def test_sqlalchemy_connection_works_too(engine):
    with engine.connect() as connection:
        chunks = list(read_sql_chunks(connection, "SELECT * FROM contacts", chunk_size=CHUNK))

    assert [len(chunk) for chunk in chunks] == [1_000, 1_000, 500]


def test_empty_result_keeps_the_columns(connection):
    (chunk,) = read_sql_chunks(connection, "SELECT email, phone FROM nobody", chunk_size=CHUNK)

    assert chunk.empty
    assert list(chunk.columns) == ["email", "phone"]


def test_stopping_early_gives_the_connection_back(engine):
    chunks = read_sql_chunks(engine, "SELECT * FROM contacts", chunk_size=CHUNK)
    next(chunks)
    assert engine.pool.checkedout() == 1

    chunks.close()

    assert engine.pool.checkedout() == 0


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELEC * FROM contacts", 'near "SELEC": syntax error'),
        ("SELECT * FROM missing_table", "no such table: missing_table"),
        ("SELECT nope FROM contacts", "no such column: nope"),
    ],
)
def test_failing_query_says_what_the_database_said(connection, sql, reason):
    with pytest.raises(SourceError) as excinfo:
        list(read_sql_chunks(connection, sql, chunk_size=CHUNK))

    assert source_message(excinfo) == f"the source query failed: {reason}"
    assert excinfo.value.__cause__ is not None


# Records handed over by an upstream task


def test_list_of_dicts_in_chunks():
    rows = contact_rows(ROWS)

    assert_chunked(list(records_chunks(rows, chunk_size=CHUNK)), rows, CHUNK)


def test_records_keep_python_values_and_missing_keys_are_none():
    rows = [{"id": 1, "email": "a@example.com"}, {"id": None, "phone": "+4155550123"}]

    (chunk,) = records_chunks(rows, chunk_size=10)

    assert list(chunk.columns) == ["id", "email", "phone"]
    assert chunk.to_dict("records") == [
        {"id": 1, "email": "a@example.com", "phone": None},
        {"id": None, "email": None, "phone": "+4155550123"},
    ]
    assert type(chunk.loc[0, "id"]) is int


def test_records_from_a_generator_are_pulled_a_chunk_at_a_time():
    pulled = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal pulled
        for row in contact_rows(ROWS):
            pulled += 1
            yield row

    chunks = records_chunks(rows(), chunk_size=CHUNK)
    assert len(next(chunks)) == CHUNK
    assert pulled == CHUNK


def test_dict_of_columns():
    records = {"email": ["a@x.io", "b@x.io", "c@x.io"], "score": [1, None, 3]}

    chunks = list(records_chunks(records, chunk_size=2))

    assert [len(chunk) for chunk in chunks] == [2, 1]
    assert chunks[1].index.equals(pd.RangeIndex(1))
    assert pd.concat(chunks, ignore_index=True).to_dict("list") == records


def test_dataframe_is_chunked_and_renumbered():
    frame = pd.DataFrame({"email": [f"p{i}@x.io" for i in range(5)]}, index=[10, 11, 12, 13, 14])

    chunks = list(records_chunks(frame, chunk_size=2))

    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert all(chunk.index.equals(pd.RangeIndex(len(chunk))) for chunk in chunks)
    assert pd.concat(chunks, ignore_index=True)["email"].tolist() == frame["email"].tolist()


def test_empty_dataframe_keeps_its_columns():
    (chunk,) = records_chunks(pd.DataFrame(columns=["email", "phone"]), chunk_size=10)

    assert chunk.empty
    assert list(chunk.columns) == ["email", "phone"]


@pytest.mark.parametrize("records", [None, [], (), {}])
def test_nothing_gives_one_empty_frame(records):
    (chunk,) = records_chunks(records, chunk_size=10)

    assert chunk.empty


def test_dict_of_empty_columns_keeps_the_columns():
    (chunk,) = records_chunks({"email": [], "phone": []}, chunk_size=10)

    assert chunk.empty
    assert list(chunk.columns) == ["email", "phone"]


@pytest.mark.parametrize(
    ("records", "got"),
    [
        (42, "got a int"),
        ("email,phone", "got a str"),
        ({"email": "a@example.com"}, "got a mapping whose column 'email' holds a str, not a list"),
        ([{"email": "a@x.io"}, {"email": "b@x.io"}, "c@x.io"], "records[2] is a str, not a mapping"),
    ],
)
def test_wrong_records_say_what_was_expected(records, got):
    with pytest.raises(SourceError) as excinfo:
        list(records_chunks(records, chunk_size=10))

    message = source_message(excinfo)
    assert message.startswith("records must be a list of rows (mappings from column name to value), ")
    assert message.endswith(got)


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(SourceError) as excinfo:
        records_chunks({"email": ["a", "b"], "phone": ["1"]}, chunk_size=10)

    assert source_message(excinfo) == (
        "the columns of records must have the same length; got 'email': 2, 'phone': 1"
    )


def test_csv_keeps_na_and_none_as_text(tmp_path: Path) -> None:
    """Only empty cells are missing: Namibia's country code and a person called None survive."""
    path = tmp_path / "contacts.csv"
    path.write_text("name,country,email\nNone,NA,\nAda,GB,ada@example.com\n")
    (frame,) = list(read_file_chunks(path, chunk_size=10))
    assert frame["name"].tolist() == ["None", "Ada"]
    assert frame["country"].tolist() == ["NA", "GB"]
    assert frame["email"].isna().tolist() == [True, False]


# -- duplicate names, bytes and nested columns (issue 13) -----------------------------------------


def _first(chunks: Iterator[pd.DataFrame]) -> pd.DataFrame:
    return next(iter(chunks))


def _parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def test_a_csv_with_two_columns_of_one_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text("id,email,email\n1,first@example.com,second@example.com\n")
    with pytest.raises(SourceError, match="more than one column named 'email'"):
        _first(read_file_chunks(path, chunk_size=CHUNK))


def test_a_parquet_file_with_two_columns_of_one_name_is_refused(tmp_path: Path) -> None:
    table = pa.table(
        [pa.array(["1"]), pa.array(["a@example.com"]), pa.array(["b@example.com"])],
        names=["id", "email", "email"],
    )
    with pytest.raises(SourceError, match="more than one column named 'email'"):
        _first(read_file_chunks(_parquet(tmp_path / "contacts.parquet", table), chunk_size=CHUNK))


def test_a_dataframe_with_two_columns_of_one_name_is_refused() -> None:
    frame = pd.DataFrame([["1", "a@example.com", "b@example.com"]], columns=["id", "email", "email"])
    with pytest.raises(SourceError, match="more than one column named 'email'"):
        _first(records_chunks(frame, chunk_size=CHUNK))


def test_a_query_with_two_columns_of_one_name_is_refused() -> None:
    connection = sqlite3.connect(":memory:")
    try:
        with pytest.raises(SourceError, match="more than one column named 'email'"):
            _first(
                read_sql_chunks(connection, "SELECT 1 AS id, 'a' AS email, 'b' AS email", chunk_size=CHUNK)
            )
    finally:
        connection.close()


def test_parquet_binary_columns_are_read_as_utf8_text(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array([b"k1", "k\xe9".encode()], type=pa.binary())})
    frame = _first(read_file_chunks(_parquet(tmp_path / "contacts.parquet", table), chunk_size=CHUNK))
    assert frame["id"].tolist() == ["k1", "k\xe9"]


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        (pa.array([{"city": "Paris", "zip": "75001"}]), "an object"),
        (pa.array([["a", "b"]]), "a list"),
    ],
    ids=["struct", "list"],
)
def test_a_nested_parquet_column_that_is_mapped_is_refused_by_name(
    tmp_path: Path, column: pa.Array, kind: str
) -> None:
    from airflow_provider_sequences.adapters.whippy import whippy_rules
    from airflow_provider_sequences.sync.prepare import PrepareSpec, prepare_chunk

    table = pa.table({"id": pa.array(["k1"]), "phone": pa.array(["+14155550123"]), "where": column})
    frame = _first(read_file_chunks(_parquet(tmp_path / "contacts.parquet", table), chunk_size=CHUNK))
    spec = PrepareSpec(
        column_map={"phone": "phone", "where": "address.city"},
        key_column="id",
        rules=whippy_rules(email_required=False),
    )
    with pytest.raises(ValueError, match=f"column 'where' holds nested values \\(row 0 holds {kind}"):
        prepare_chunk(frame, spec, first_row=0)
    # Not mapped, it is not read.
    spec = PrepareSpec(
        column_map={"phone": "phone"}, key_column="id", rules=whippy_rules(email_required=False)
    )
    assert len(prepare_chunk(frame, spec, first_row=0).contacts) == 1


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_a_postgresql_query_streams_its_result_through_a_server_side_cursor(
    postgres_url: str, driver: str
) -> None:
    """A driver's default cursor holds a query's whole result in the worker before the first
    chunk (gigabytes for ten million rows): the result comes a chunk at a time instead."""
    engine = sa.create_engine(postgres_url.replace("postgresql://", f"postgresql+{driver}://", 1))
    table = {"psycopg": "export_psycopg", "psycopg2": "export_psycopg2"}[driver]  # names, not input
    with engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        rows = "SELECT 'c' || g AS contact_id FROM generate_series(1, 5000) g"
        connection.execute(sa.text(f"CREATE TABLE {table} AS {rows}"))
    query = f"SELECT contact_id FROM {table} ORDER BY contact_id"  # noqa: S608 - a constant name
    chunks = read_sql_chunks(engine, query, chunk_size=1_000)
    first = next(chunks)
    with engine.connect() as other:
        # What the reading session said last: DECLARE or FETCH of its cursor, not a SELECT
        # whose whole result it already holds.
        said = other.execute(
            sa.text(
                "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'idle in transaction'"
            )
        ).scalars()
        assert {"DECLARE", "FETCH"} & {query.split(None, 1)[0].upper() for query in said}
    rest = list(chunks)
    assert [len(first), *(len(chunk) for chunk in rest)] == [1_000] * 5
    engine.dispose()
