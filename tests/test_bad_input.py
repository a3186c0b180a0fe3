"""A corpus of bad input: every kind a CRM export or a task's settings can hold, and exactly
what a user is told about each.

Configuration errors must stop the task with a typed exception whose message says what to fix
(nothing sent); row errors must become a not-processed outcome with a reason and a detail
(never a lost row, never a bare stack trace). Most cases drive the operators' ``execute``
directly with a minimal context (one module-wide simulator of each service, a fresh sync state
and run id per case), which keeps the corpus fast; a few run through ``dag.test()`` where the
task's failure as Airflow records it matters.
"""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.1
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]

from airflow_provider_sequences.adapters.whippy import WhippyAdapter
from airflow_provider_sequences.exceptions import (
    SequencesApiError,
    SourceError,
    SyncAbortedError,
    SyncConfigurationError,
    SyncFailedError,
    UnexpectedAnswerError,
)
from airflow_provider_sequences.hooks.whippy import WhippyHook
from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator
from airflow_provider_sequences.operators.whippy import WhippyAddContactsToSequenceOperator
from airflow_provider_sequences.sync.state import create_state_engine, read_state
from airflow_provider_sequences.testing import (
    ReplyAccount,
    ReplySimulator,
    WhippyAccount,
    WhippySimulator,
    connection_env_var,
    connection_json,
)
from airflow_provider_sequences.testing.accounts import seed_reply_account, seed_whippy_account
from tests.http_stub import Answer, Seen, StubServer, json_answer

STATE_CONN = "bad_input_state"
CRM_CONN = "bad_input_crm"
NAN = float("nan")
_run_ids = itertools.count()


# -- the harness --------------------------------------------------------------------------------


class _TaskInstance:
    """What the operators read from ``context["ti"]``."""

    dag_id = "bad_input"
    map_index = -1

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class World:
    """Both simulators, their accounts and this test's sync state."""

    def __init__(
        self,
        reply: ReplySimulator,
        reply_account: ReplyAccount,
        whippy: WhippySimulator,
        whippy_account: WhippyAccount,
        state_db: Path,
    ) -> None:
        self.reply = reply
        self.reply_account = reply_account
        self.whippy = whippy
        self.whippy_account = whippy_account
        self.state_db = state_db
        self.ti: _TaskInstance | None = None

    def execute(self, operator: Any) -> dict[str, Any]:
        """``operator.execute`` as a task run would call it, with a run id never used before."""
        self.ti = _TaskInstance(operator.task_id)
        return operator.execute({"ti": self.ti, "run_id": f"run-{next(_run_ids)}"})  # type: ignore[no-any-return]

    def reply_op(self, **kwargs: Any) -> ReplyAddContactsToSequenceOperator:
        kwargs.setdefault("sequence_id", self.reply_account.sequence_id)
        kwargs.setdefault("state_conn_id", STATE_CONN)
        kwargs.setdefault("max_not_processed_share", None)
        if "key_column" not in kwargs and "contact_id_column" not in kwargs:
            kwargs["key_column"] = "id"
        if "contact_id_column" not in kwargs and "firstName" not in kwargs.get("column_map", {}).values():
            # Reply imports need a first name; these tests' rows are about other things.
            kwargs.setdefault("first_name_fallback", "there")
        return ReplyAddContactsToSequenceOperator(task_id=f"reply_{next(_run_ids)}", **kwargs)

    def whippy_op(self, **kwargs: Any) -> WhippyAddContactsToSequenceOperator:
        kwargs.setdefault("sequence_id", self.whippy_account.sequence_id)
        kwargs.setdefault("state_conn_id", STATE_CONN)
        kwargs.setdefault("max_not_processed_share", None)
        kwargs.setdefault("key_column", "id")
        kwargs.setdefault("enrollment_timeout", 5.0)
        kwargs.setdefault("poll_interval", 0.05)
        return WhippyAddContactsToSequenceOperator(task_id=f"whippy_{next(_run_ids)}", **kwargs)

    def writes(self, since_reply: int, since_whippy: int) -> list[Any]:
        return [
            r
            for r in [*self.reply.requests[since_reply:], *self.whippy.requests[since_whippy:]]
            if r.method != "GET"
        ]

    def state_rows(self) -> list[tuple[Any, ...]]:
        if not self.state_db.exists():
            return []
        with sqlite3.connect(self.state_db) as connection:
            tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if ("sequence_sync_state",) not in tables:
                return []
            return connection.execute("SELECT * FROM sequence_sync_state").fetchall()

    def state_statuses(self) -> dict[str, str]:
        """Each key's status as people read the state (keys of a batch in flight: ``sending``)."""
        engine = create_state_engine(f"sqlite:///{self.state_db}")
        try:
            frame = read_state(engine)
        finally:
            engine.dispose()
        return dict(zip(frame["contact_key"], frame["status"], strict=True))


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[ReplySimulator, ReplyAccount, WhippySimulator, WhippyAccount]]:
    with (
        ReplySimulator(enforce_rate_limits=False) as reply,
        WhippySimulator(enforce_rate_limits=False) as whippy,
    ):
        yield reply, seed_reply_account(reply), whippy, seed_whippy_account(whippy)


@pytest.fixture
def world(
    simulators: tuple[ReplySimulator, ReplyAccount, WhippySimulator, WhippyAccount],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    reply, reply_account, whippy, whippy_account = simulators
    state_db = tmp_path / "state.db"
    monkeypatch.setenv(
        connection_env_var(STATE_CONN), json.dumps({"conn_type": "sqlite", "host": str(state_db)})
    )
    monkeypatch.setenv(
        connection_env_var("reply_default"), connection_json("reply", reply.url, reply_account.api_key)
    )
    monkeypatch.setenv(
        connection_env_var("whippy_default"), connection_json("whippy", whippy.url, whippy_account.api_key)
    )
    return World(reply, reply_account, whippy, whippy_account, state_db)


def check_accounting(result: dict[str, Any], keys: set[str]) -> None:
    """Every distinct key is in exactly one outcome; no row is lost."""
    added, not_processed, stats = result["added"], result["not_processed"], result["stats"]
    assert not set(added) & set(not_processed)
    assert set(added) | set(not_processed) == keys
    assert stats["rows"] == len(added) + len(not_processed) + stats["duplicates"] + stats["unchanged"]


def outcomes(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {key: (v["reason"], v["detail"]) for key, v in result["not_processed"].items()}


def ok_row(i: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"ok{i}", "email": f"ok{i}@example.com", "first": f"First{i}", **fields}


# -- row errors: a not-processed outcome with the exact reason and detail ------------------------

REPLY_MAP = {"email": "email", "phone": "phone", "first": "firstName", "tier": "customFields.Tier"}

#: kind -> (fields of the bad row, operator arguments, (reason, detail) the user sees)
REPLY_ROW_CASES: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, str]]] = {
    "malformed email": (
        {"email": "not-an-email"},
        {},
        (
            "invalidEmail",
            "'not-an-email' is not a valid email: An email address must have an @-sign.",
        ),
    ),
    "email with a space inside": (
        {"email": "ada lovelace@example.com"},
        {},
        (
            "invalidEmail",
            "'ada lovelace@example.com' is not a valid email: The email address contains invalid "
            "characters before the @-sign: SPACE.",
        ),
    ),
    "email over 255 characters": (
        {"email": "a" * 250 + "@example.com"},
        {},
        (
            "invalidEmail",
            f"'{'a' * 250}@example.com' is not a valid email: The email address is too long "
            "(8 characters too many).",
        ),
    ),
    "missing email (None)": ({"email": None}, {}, ("missingEmail", "email is empty (column 'email')")),
    "missing email (NaN)": ({"email": NAN}, {}, ("missingEmail", "email is empty (column 'email')")),
    "empty email": ({"email": ""}, {}, ("missingEmail", "email is empty (column 'email')")),
    "whitespace-only email": ({"email": "   "}, {}, ("missingEmail", "email is empty (column 'email')")),
    "phone without country code": (
        {"phone": "4155550100"},
        {},
        ("invalidPhone", "'4155550100' has no country code; set default_region or use +<country code>"),
    ),
    "phone with letters": (
        {"phone": "415CALLME"},
        {},
        ("invalidPhone", "'415CALLME' is not a phone number: it contains letters"),
    ),
    "phone too short": ({"phone": "+1 12"}, {}, ("invalidPhone", "'+1 12' is not a valid phone number")),
    "phone from another region": (
        {"phone": "415 555 0100"},
        {"default_region": "GB"},
        (
            "invalidPhone",
            "'415 555 0100' is not a valid GB phone number; numbers from other countries need "
            "+<country code>",
        ),
    ),
    "name over 255 characters": (
        {"first": "x" * 300},
        {},
        ("fieldTooLong", "firstName is 300 characters; Reply accepts at most 255"),
    ),
    "custom field over 255 characters": (
        {"tier": "t" * 256},
        {},
        ("fieldTooLong", "customFields.Tier is 256 characters; Reply accepts at most 255"),
    ),
}


@pytest.mark.parametrize("kind", list(REPLY_ROW_CASES))
def test_reply_row_error_is_reported_with_its_reason(world: World, kind: str) -> None:
    fields, kwargs, expected = REPLY_ROW_CASES[kind]
    n = next(_run_ids)
    bad = {"id": "bad", "email": f"bad{n}@example.com", "phone": None, "first": "Bad", "tier": None, **fields}
    good = ok_row(n, phone="+1 415 555 0101", first="Good", tier="gold")
    result = world.execute(world.reply_op(contacts=[good, bad], column_map=REPLY_MAP, **kwargs))

    assert outcomes(result) == {"bad": expected}
    assert result["added"] == [f"ok{n}"]
    check_accounting(result, {"bad", f"ok{n}"})


def test_emails_are_trimmed_and_unicode_is_judged_not_dropped(world: World) -> None:
    n = next(_run_ids)
    rows = [
        {"id": "spaced", "email": f"  Ada{n}@Example.COM "},
        {"id": "unicode-local", "email": f"josé{n}@example.com"},
        {"id": "unicode-domain", "email": f"u{n}@exämple.com"},
    ]
    result = world.execute(world.reply_op(contacts=rows, column_map={"email": "email"}))

    check_accounting(result, {"spaced", "unicode-local", "unicode-domain"})
    # Surrounding spaces and case are normalised away; the service gets the clean address.
    assert "spaced" in result["added"]
    assert world.reply.contact_by_email(f"ada{n}@example.com") is not None
    # Internationalised addresses are valid email: each either enrolled or given a reason.
    for key, (reason, detail) in outcomes(result).items():
        assert reason, key
        assert detail, key


def test_keys_null_empty_blank_and_nan_become_missing_key_rows(world: World) -> None:
    n = next(_run_ids)
    rows = [
        ok_row(n),
        {"id": None, "email": f"none{n}@example.com"},
        {"id": "", "email": f"empty{n}@example.com"},
        {"id": "   ", "email": f"blank{n}@example.com"},
        {"id": NAN, "email": f"nan{n}@example.com"},
    ]
    result = world.execute(world.reply_op(contacts=rows, column_map={"email": "email"}))

    assert outcomes(result) == {
        f"row:{i}": ("missingKey", f"row {i} has no value in the key column 'id'") for i in (1, 2, 3, 4)
    }
    check_accounting(result, {f"ok{n}", "row:1", "row:2", "row:3", "row:4"})


@pytest.mark.parametrize("missing", [None, NAN], ids=["None", "NaN"])
def test_none_or_nan_in_every_field_is_a_missing_key_row(world: World, missing: Any) -> None:
    n = next(_run_ids)
    rows = [
        ok_row(n, phone=None, first=None, tier=None),
        dict.fromkeys(("id", "email", "phone", "first", "tier"), missing),
    ]
    # The first name too: the fallback stands in for it (Reply requires one).
    result = world.execute(world.reply_op(contacts=rows, column_map=REPLY_MAP, first_name_fallback="there"))

    assert outcomes(result) == {"row:1": ("missingKey", "row 1 has no value in the key column 'id'")}
    check_accounting(result, {f"ok{n}", "row:1"})
    # Whippy: a row of nothing but missing values, with a key, lacks its phone.
    rows = [{"id": f"w{n}", "phone": missing, "name": missing, "city": missing}]
    result = world.execute(
        world.whippy_op(contacts=rows, column_map={"phone": "phone", "name": "name", "city": "address.city"})
    )
    assert outcomes(result) == {f"w{n}": ("missingPhone", "phone is empty (column 'phone')")}


def test_duplicate_keys_with_different_data_first_row_wins(world: World) -> None:
    n = next(_run_ids)
    rows = [
        {"id": "dup", "email": f"first{n}@example.com"},
        {"id": "dup", "email": f"second{n}@example.com"},
        {"id": "dup", "email": "not-an-email"},
    ]
    result = world.execute(world.reply_op(contacts=rows, column_map={"email": "email"}))

    assert result["added"] == ["dup"]
    assert result["stats"]["duplicates"] == 2
    check_accounting(result, {"dup"})
    assert world.reply.contact_by_email(f"first{n}@example.com") is not None
    assert world.reply.contact_by_email(f"second{n}@example.com") is None


def test_contact_ids_float_negative_fractional_text_and_missing(world: World) -> None:
    rows = [
        {"cid": 1.5e9},  # a float that is a whole number: contact 1500000000, not "1500000000.0"
        {"cid": -3},
        {"cid": 2.5},
        {"cid": "abc"},
        {"cid": None},
    ]
    result = world.execute(world.reply_op(contact_id_column="cid", contacts=rows, column_map={}))

    assert outcomes(result) == {
        "1500000000": ("contactNotFound", "contact 1500000000 does not exist"),
        "-3": ("invalidContactId", "contact id '-3' in column 'cid' is not a positive integer"),
        "2.5": ("invalidContactId", "contact id '2.5' in column 'cid' is not a positive integer"),
        "abc": ("invalidContactId", "contact id 'abc' in column 'cid' is not a positive integer"),
        "row:4": ("missingKey", "row 4 has no value in the key column 'cid'"),
    }
    check_accounting(result, {"1500000000", "-3", "2.5", "abc", "row:4"})


WHIPPY_MAP = {"phone": "phone", "name": "name", "city": "address.city", "day": "birth_date.day"}

WHIPPY_ROW_CASES: dict[str, tuple[dict[str, Any], tuple[str, str]]] = {
    "missing phone": ({"phone": None}, ("missingPhone", "phone is empty (column 'phone')")),
    "phone with letters": (
        {"phone": "abc"},
        ("invalidPhone", "'abc' is not a phone number: it contains letters"),
    ),
    "phone without country code": (
        {"phone": "4155550100"},
        ("invalidPhone", "'4155550100' has no country code; set default_region or use +<country code>"),
    ),
    "name over 255 characters": (
        {"name": "n" * 256},
        ("fieldTooLong", "name is 256 characters; Whippy accepts at most 255"),
    ),
    "address part over 255 characters": (
        {"city": "c" * 300},
        ("fieldTooLong", "address.city is 300 characters; Whippy accepts at most 255"),
    ),
    "text in an integer field": (
        {"day": "abc"},
        ("invalidField", "birth_date.day must be a whole number; got 'abc'"),
    ),
    "fraction in an integer field": (
        {"day": 1.5},
        ("invalidField", "birth_date.day must be a whole number; got '1.5'"),
    ),
}


@pytest.mark.parametrize("kind", list(WHIPPY_ROW_CASES))
def test_whippy_row_error_is_reported_with_its_reason(world: World, kind: str) -> None:
    fields, expected = WHIPPY_ROW_CASES[kind]
    n = next(_run_ids)
    bad = {"id": "bad", "phone": "+14155550199", "name": "Bad", "city": None, "day": None, **fields}
    reply_before, whippy_before = len(world.reply.requests), len(world.whippy.requests)
    result = world.execute(world.whippy_op(contacts=[bad], column_map=WHIPPY_MAP))

    assert outcomes(result) == {"bad": expected}
    check_accounting(result, {"bad"})
    # Every row rejected: an empty ``to`` is never sent.
    assert world.writes(reply_before, whippy_before) == []
    assert result["stats"]["write_requests"] == 0
    del n


def test_all_rows_rejected_sends_no_request_and_fails_the_task(world: World) -> None:
    rows = [{"id": f"r{i}", "email": "not-an-email"} for i in range(3)]
    reply_before, whippy_before = len(world.reply.requests), len(world.whippy.requests)
    operator = world.reply_op(contacts=rows, column_map={"email": "email"}, max_not_processed_share=0.5)
    with pytest.raises(SyncFailedError) as failure:
        world.execute(operator)

    assert str(failure.value) == (
        "3 of 3 contacts (100%) were not processed, more than max_not_processed_share=50%; "
        "the result with every reason is in XCom"
    )
    assert world.writes(reply_before, whippy_before) == []
    assert world.ti is not None
    result = world.ti.xcom["return_value"]
    assert {key: v["reason"] for key, v in result["not_processed"].items()} == dict.fromkeys(
        ("r0", "r1", "r2"), "invalidEmail"
    )


def test_missing_key_detail_names_the_source_row_on_a_later_night(world: World) -> None:
    """A resumed or incremental run skips settled rows before the full checks: the detail of a
    row without a key must still name its row in the source, as its ``row:<n>`` key does."""
    n = next(_run_ids)
    first_night = [ok_row(n), ok_row(n + 1)]
    operator = world.reply_op(contacts=first_night, column_map={"email": "email"})
    operator.execute({"ti": _TaskInstance(operator.task_id), "run_id": f"night-{n}-1"})
    operator.contacts = [*first_night, {"id": None, "email": f"nokey{n}@example.com"}]
    result = operator.execute({"ti": _TaskInstance(operator.task_id), "run_id": f"night-{n}-2"})

    assert result["stats"]["unchanged"] == 2
    assert outcomes(result) == {"row:2": ("missingKey", "row 2 has no value in the key column 'id'")}


# -- configuration and source errors: a typed exception that says what to fix -------------------


def _reply_config_cases(
    world: World, tmp_path: Path
) -> dict[str, tuple[dict[str, Any], type[Exception], str]]:
    """kind -> (operator arguments, exception type, the exact message)."""
    good = {"contacts": [ok_row(0)], "column_map": {"email": "email"}}
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    not_parquet = tmp_path / "contacts.parquet"
    not_parquet.write_text("id,email\n1,a@example.com\n")
    spreadsheet = tmp_path / "contacts.xlsx"
    spreadsheet.write_text("id,email\n")
    seq = world.reply_account.sequence_id
    return {
        "missing mapped column": (
            {"contacts": [{"id": "1", "mail": "a@example.com"}], "column_map": {"email": "email"}},
            ValueError,
            "the source has no column 'email' (mapped in column_map); its columns are: id, mail",
        ),
        "missing key column": (
            {**good, "key_column": "crm_id"},
            ValueError,
            "the source has no column 'crm_id' (the key column); its columns are: id, email, first",
        ),
        "unknown field in column_map": (
            {**good, "column_map": {"email": "email", "shoe": "shoeSize"}},
            ValueError,
            "column_map maps 'shoe' to unknown field 'shoeSize'; Reply fields are: city, company, "
            "country, email, firstName, lastName, linkedInUrl, notes, phone, state, timeZoneId, title; "
            "nested fields: customFields.<name>",
        ),
        "two columns mapped to one field": (
            {**good, "column_map": {"email": "email", "id": "email"}},
            ValueError,
            "column_map maps both 'email' and 'id' to field 'email'; map each field from one column",
        ),
        "empty file": (
            {"source_path": str(empty), "column_map": {"email": "email"}},
            SourceError,
            f"could not read {empty} as CSV: the file is empty, not even a header row",
        ),
        "unreadable file": (
            {"source_path": str(tmp_path / "nope.csv"), "column_map": {"email": "email"}},
            SourceError,
            f"could not open {tmp_path / 'nope.csv'}: no such file",
        ),
        "wrong file format": (
            {"source_path": str(not_parquet), "column_map": {"email": "email"}},
            SourceError,
            f"could not read {not_parquet} as Parquet: Parquet magic bytes not found in footer. "
            "Either the file is corrupted or this is not a parquet file.",
        ),
        "unknown file format": (
            {"source_path": str(spreadsheet), "column_map": {"email": "email"}},
            SourceError,
            f"cannot tell the format of {spreadsheet} from its name (known endings: .csv, .parquet, "
            ".pq, .jsonl, .ndjson, .json, optionally followed by .gz, .bz2, .xz, .zip); pass "
            "file_format as one of 'csv', 'parquet', 'jsonl'",
        ),
        "SQL error": (
            {
                "sql": "SELECT id, email FROM no_such_table",
                "source_conn_id": CRM_CONN,
                "column_map": {"email": "email"},
            },
            SourceError,
            "the source query failed: no such table: no_such_table",
        ),
        "sequence that does not exist": (
            {**good, "sequence_id": 999999},
            SyncConfigurationError,
            "Reply sequence 999999 does not exist or the acting user cannot see it",
        ),
        "unknown step": (
            {**good, "start_step_id": 424242},
            SyncConfigurationError,
            f"start_step_id 424242 is not a step of Reply sequence {seq} ('Nightly onboarding'); "
            "its steps are [50001, 50002, 50003]",
        ),
        "batch_size over the service's maximum": (
            {**good, "batch_size": 5000},
            ValueError,
            "batch_size must be between 1 and 1000, got 5000",
        ),
        "unknown default_region": (
            {**good, "default_region": "XX"},
            ValueError,
            "default_region 'XX' is not a region phonenumbers knows; give an ISO 3166 alpha-2 code "
            "such as 'US' or 'GB'",
        ),
        "dry_run that is not a boolean": (
            {**good, "dry_run": "maybe"},
            ValueError,
            "dry_run must be true or false, got 'maybe'",
        ),
    }


REPLY_CONFIG_KINDS = [
    "missing mapped column",
    "missing key column",
    "unknown field in column_map",
    "two columns mapped to one field",
    "empty file",
    "unreadable file",
    "wrong file format",
    "unknown file format",
    "SQL error",
    "sequence that does not exist",
    "unknown step",
    "batch_size over the service's maximum",
    "unknown default_region",
    "dry_run that is not a boolean",
]


@pytest.mark.parametrize("kind", REPLY_CONFIG_KINDS)
def test_reply_configuration_error_stops_before_sending(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    crm = tmp_path / "crm.db"
    with sqlite3.connect(crm) as connection:
        connection.execute("CREATE TABLE contacts (id TEXT, email TEXT)")
    monkeypatch.setenv(connection_env_var(CRM_CONN), json.dumps({"conn_type": "sqlite", "host": str(crm)}))
    cases = _reply_config_cases(world, tmp_path)
    assert set(cases) == set(REPLY_CONFIG_KINDS)
    kwargs, error, message = cases[kind]
    reply_before, whippy_before = len(world.reply.requests), len(world.whippy.requests)
    with pytest.raises(error) as raised:
        world.execute(world.reply_op(**kwargs))

    assert str(raised.value) == message
    assert world.writes(reply_before, whippy_before) == []
    assert world.state_rows() == []


@pytest.mark.parametrize(
    "source",
    ["empty list", "header-only CSV", "empty SQL result"],
)
def test_an_empty_table_is_a_night_with_nothing_to_do(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    kwargs: dict[str, Any]
    if source == "empty list":
        kwargs = {"contacts": []}
    elif source == "header-only CSV":
        path = tmp_path / "contacts.csv"
        path.write_text("id,email\n")
        kwargs = {"source_path": str(path)}
    else:
        crm = tmp_path / "crm.db"
        with sqlite3.connect(crm) as connection:
            connection.execute("CREATE TABLE contacts (id TEXT, email TEXT)")
        monkeypatch.setenv(
            connection_env_var(CRM_CONN), json.dumps({"conn_type": "sqlite", "host": str(crm)})
        )
        kwargs = {"sql": "SELECT id, email FROM contacts", "source_conn_id": CRM_CONN}
    reply_before, whippy_before = len(world.reply.requests), len(world.whippy.requests)
    result = world.execute(
        world.reply_op(column_map={"email": "email"}, max_not_processed_share=0.5, **kwargs)
    )

    assert (result["added"], result["not_processed"]) == ([], {})
    assert result["stats"]["rows"] == 0
    assert world.writes(reply_before, whippy_before) == []


# -- what the service refuses ---------------------------------------------------------------------


def test_reply_key_without_the_operate_scope_aborts_with_every_row_recorded(world: World) -> None:
    key = f"no-operate-{next(_run_ids)}"
    world.reply.add_api_key(
        key, world.reply_account.user_id, scopes={"contacts:read", "contacts:write", "sequences:read"}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(connection_env_var("reply_default"), connection_json("reply", world.reply.url, key))
        n = next(_run_ids)
        with pytest.raises(SyncAbortedError) as raised:
            world.execute(world.reply_op(contacts=[ok_row(n), ok_row(n + 1)], column_map={"email": "email"}))
    seq = world.reply_account.sequence_id
    assert str(raised.value) == (
        f"Reply.io refused the request, so no batch can succeed: Reply.io API POST /v3/sequences/{seq}/"
        "contact-links/bulk failed: 403 auth.missingScope: this API key lacks the scope 'sequences:operate'"
    )
    assert "no-operate" not in str(raised.value)
    # Nothing lost: the refused batch's keys stay "sending" in the state, so a retry (with a
    # key that has the scope) sends them again.
    assert world.state_statuses() == {f"ok{n}": "sending", f"ok{n + 1}": "sending"}


@pytest.mark.parametrize("case", ["bad key (401)", "key without the read scope (403)"])
def test_reply_refused_key_stops_the_run_before_sending(world: World, case: str) -> None:
    key = f"refused-{next(_run_ids)}"
    if case.startswith("key without"):
        world.reply.add_api_key(key, world.reply_account.user_id, scopes={"contacts:read", "contacts:write"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(connection_env_var("reply_default"), connection_json("reply", world.reply.url, key))
        with pytest.raises(SequencesApiError) as raised:
            world.execute(world.reply_op(contacts=[ok_row(0)], column_map={"email": "email"}))
    seq = world.reply_account.sequence_id
    expected = {
        # The first request asks whoami for the account the key acts as (it names the state).
        "bad key (401)": "Reply.io API GET /v3/whoami failed: 401: the API key is missing, wrong or revoked",
        "key without the read scope (403)": (
            f"Reply.io API GET /v3/sequences/{seq} failed: 403 auth.missingScope: "
            "this API key lacks the scope 'sequences:read'"
        ),
    }[case]
    assert (type(raised.value).__name__, str(raised.value)) == ("SequencesApiError", expected)
    assert key not in str(raised.value)
    assert world.state_rows() == []


def test_reply_expired_start_from(world: World) -> None:
    n = next(_run_ids)
    with pytest.raises(SyncAbortedError) as raised:
        world.execute(
            world.reply_op(
                contacts=[ok_row(n)], column_map={"email": "email"}, start_from="2001-01-01T00:00:00+00:00"
            )
        )
    assert type(raised.value) is SyncAbortedError
    seq = world.reply_account.sequence_id
    assert re.fullmatch(
        rf"Reply.io refused the request, so no batch can succeed: Reply.io API POST /v3/sequences/{seq}/"
        r"contact-links/bulk failed: 400 \S+ .*\[startFrom: startFrom 2001-01-01T00:00:00\+00:00 is in "
        r"the past \(now is [-0-9T:+]+\)\]",
        str(raised.value),
    ), str(raised.value)
    assert world.state_statuses() == {f"ok{n}": "sending"}


def _whippy_row(n: int) -> dict[str, Any]:
    return {"id": f"w{n}", "phone": f"+1415555{n % 10000:04d}", "name": "A", "tier": "gold"}


def test_whippy_configuration_errors(world: World) -> None:
    draft = world.whippy.add_sequence("Draft", steps=["sms"], status="draft")
    seq = world.whippy_account.sequence_id
    steps = [step["id"] for step in world.whippy.sequence(seq)["steps"]]
    cases: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
        "sequence that does not exist": (
            {"sequence_id": "no-such-sequence"},
            SyncConfigurationError,
            "Whippy sequence no-such-sequence does not exist",
        ),
        "draft sequence": (
            {"sequence_id": draft},
            SyncConfigurationError,
            f"Whippy sequence {draft} ('Draft') is a draft and accepts no contacts: "
            "activate it in Whippy first",
        ),
        "unknown step": (
            {"step_id": "no-such-step"},
            SyncConfigurationError,
            f"step_id no-such-step is not a step of Whippy sequence {seq}; its steps are {steps}",
        ),
        "from channel that does not exist": (
            {"from_channel": "+15550000000"},
            SyncConfigurationError,
            "from_channel '+15550000000' is not a channel of this Whippy organization; its channels are "
            "['+15555550100']",
        ),
        "unknown custom data resource": (
            {"custom_data_resource": "bogus"},
            SyncConfigurationError,
            "custom_data_resource must be 'contact' or 'step_contact', not 'bogus'",
        ),
        "email step without an email column": (
            {"sequence_id": world.whippy_account.email_sequence_id},
            ValueError,
            "column_map maps no column to 'email', which Whippy requires",
        ),
    }
    for kind, (kwargs, error, message) in cases.items():
        reply_before, whippy_before = len(world.reply.requests), len(world.whippy.requests)
        with pytest.raises(error) as raised:
            world.execute(world.whippy_op(contacts=[_whippy_row(1)], column_map={"phone": "phone"}, **kwargs))
        assert str(raised.value) == message, kind
        assert world.writes(reply_before, whippy_before) == [], kind
    assert world.state_rows() == []


def test_whippy_custom_object_that_does_not_exist(world: World) -> None:
    n = next(_run_ids)
    with pytest.raises(SyncAbortedError) as raised:
        world.execute(
            world.whippy_op(
                custom_object_id="no-such-object",
                contacts=[_whippy_row(n)],
                column_map={"phone": "phone", "tier": "properties.tier"},
            )
        )
    seq = world.whippy_account.sequence_id
    assert str(raised.value) == (
        f"Whippy refused the request, so no batch can succeed: Whippy API POST /v1/sequences/{seq}/contacts "
        "failed: 422 [custom_data.custom_object_id: custom object not found]"
    )
    assert world.state_statuses() == {f"w{n}": "sending"}


def test_whippy_bad_key(world: World) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            connection_env_var("whippy_default"), connection_json("whippy", world.whippy.url, "wrong-key-x")
        )
        with pytest.raises(SequencesApiError) as raised:
            world.execute(world.whippy_op(contacts=[_whippy_row(1)], column_map={"phone": "phone"}))
    seq = world.whippy_account.sequence_id
    assert (type(raised.value).__name__, str(raised.value)) == (
        "SequencesApiError",
        f"Whippy API GET /v1/sequences/{seq} failed: 401: Not authenticated",
    )
    assert "wrong-key-x" not in str(raised.value)


def test_whippy_expired_schedule_at(world: World) -> None:
    n = next(_run_ids)
    result = world.execute(
        world.whippy_op(
            schedule_at="2001-01-01T00:00:00+00:00", contacts=[_whippy_row(n)], column_map={"phone": "phone"}
        )
    )
    # The simulator, like Whippy's documentation, takes a past time as "start now": the
    # contact is enrolled, not lost and not refused.
    assert result["added"] == [f"w{n}"]
    check_accounting(result, {f"w{n}"})


# -- answers of an unexpected shape, ids, bytes and keys that cannot be exact (issue 13) ----------


def _reply_stub(bulk_answer: Answer) -> Callable[[Seen], Answer]:
    """A Reply whose sequence 1001 exists and whose bulk add answers ``bulk_answer``."""

    def script(seen: Seen) -> Answer:
        if seen.path == "/v3/whoami":
            return json_answer({"userId": 1})
        if seen.method == "GET" and seen.path.startswith("/v3/sequences/1001/contacts"):
            return json_answer({"items": [], "hasMore": False})
        if seen.method == "GET" and seen.path.startswith("/v3/sequences/1001"):
            return json_answer({"id": 1001, "name": "Stub", "steps": [{"id": 1}]})
        if seen.path.startswith("/v3/sequences/1001/contact-links/bulk"):
            return bulk_answer
        return Answer(404)

    return script


@pytest.mark.parametrize(
    "answer",
    [
        json_answer({}),
        json_answer(None),
        Answer(200, b""),
        json_answer({"added": "12"}),
        json_answer({"added": [{"id": 1}]}),
        json_answer({"notProcessed": []}),
    ],
    ids=["empty-object", "null", "empty-body", "added-text", "added-objects", "not-processed-list"],
)
def test_a_reply_bulk_add_answer_of_unexpected_shape_is_request_failed(
    world: World, answer: Answer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with StubServer(_reply_stub(answer)) as stub:
        monkeypatch.setenv(connection_env_var("reply_default"), connection_json("reply", stub.url, "key-123"))
        rows = [{"cid": 12, "email": "private.person@example.com"}, {"cid": 34}]
        result = world.execute(
            world.reply_op(contacts=rows, contact_id_column="cid", sequence_id=1001, column_map={})
        )
    check_accounting(result, {"12", "34"})
    reasons = {key: reason for key, (reason, _) in outcomes(result).items()}
    assert reasons == {"12": "requestFailed", "34": "requestFailed"}
    assert "unexpected" in caplog.text
    assert "private.person" not in caplog.text


def test_a_whippy_sequence_whose_steps_have_no_ids_is_a_transient_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sequence = {"data": {"id": "s1", "status": "active", "steps": [{"position": 1}]}}
    with StubServer(lambda seen: json_answer(sequence)) as stub:
        monkeypatch.setenv(
            connection_env_var("whippy_default"), connection_json("whippy", stub.url, "key-123")
        )
        with pytest.raises(UnexpectedAnswerError, match="steps are list of 1"):
            WhippyAdapter(WhippyHook(), "s1").preflight()


def test_one_reply_sequence_written_two_ways_is_one_sync_state(world: World) -> None:
    # Emails no other test of the module sends: the simulator's sequence outlives a test.
    rows = [{"id": f"two-ways-{i}", "email": f"two-ways-{i}@example.com"} for i in range(3)]
    sequence = world.reply_account.sequence_id
    first = world.execute(
        world.reply_op(contacts=rows, column_map={"email": "email"}, sequence_id=f" {sequence}")
    )
    assert len(first["added"]) == 3
    since = len(world.reply.requests)
    again = world.execute(
        world.reply_op(contacts=rows, column_map={"email": "email"}, sequence_id=str(sequence))
    )
    assert again["stats"]["unchanged"] == 3
    assert again["not_processed"] == {}
    assert world.writes(since, len(world.whippy.requests)) == []


@pytest.mark.parametrize(
    ("service", "sequence_id", "message"),
    [
        ("whippy", "  ", "sequence_id is empty"),
        ("whippy", "../../v1/admin", "is not a valid id"),
        ("reply", "abc", "positive whole number"),
        ("reply", "", "sequence_id is empty"),
    ],
)
def test_a_sequence_id_that_cannot_be_one_fails_the_task_without_retries(
    world: World, service: str, sequence_id: str, message: str
) -> None:
    if service == "reply":
        operator: Any = world.reply_op(
            contacts=[ok_row(1)], column_map={"email": "email"}, sequence_id=sequence_id
        )
    else:
        operator = world.whippy_op(
            contacts=[{"id": "w1", "phone": "+14155550123"}], column_map={"phone": "phone"}
        )
        operator.sequence_id = sequence_id
    since = (len(world.reply.requests), len(world.whippy.requests))
    with pytest.raises(AirflowFailException, match=message):
        world.execute(operator)
    assert world.reply.requests[since[0] :] == []
    assert world.whippy.requests[since[1] :] == []


def test_undecodable_bytes_give_the_row_a_reason(world: World) -> None:
    rows = [
        {"id": b"\xff\xfeab", "email": "a@example.com"},
        {"id": "k2", "email": b"\xffx@example.com"},
        {"id": "bytes-ok", "email": "bytes-ok@example.com"},  # an email no other test sends
    ]
    result = world.execute(world.reply_op(contacts=rows, column_map={"email": "email"}))
    assert result["added"] == ["bytes-ok"]
    assert outcomes(result) == {
        "row:0": ("missingKey", "row 0 holds bytes that are not UTF-8 text in the key column 'id'"),
        "k2": (
            "invalidField",
            "column 'email' holds bytes that are not UTF-8 text; decode them in the source",
        ),
    }


def test_float_keys_beyond_2_to_the_53_are_refused(world: World) -> None:
    rows = [
        {"id": float(2**53 + 1), "email": "a@example.com"},
        {"id": float(2**53), "email": "b@example.com"},
    ]
    result = world.execute(world.reply_op(contacts=rows, column_map={"email": "email"}))
    assert result["added"] == []
    # Both read as 9007199254740992: one key, neither sent, the second a duplicate of the first.
    assert set(outcomes(result)) == {"9007199254740992"}
    assert {reason for reason, _ in outcomes(result).values()} == {"invalidField"}
    assert result["stats"]["duplicates"] == 1
    assert all("cast the key column to text" in detail for _, detail in outcomes(result).values())


# -- Airflow's conventions: a task that cannot pass is not retried; conn ids are templated ----


@pytest.mark.parametrize(
    "kind",
    ["sequence that does not exist", "unknown field in column_map", "batch_size over the service's maximum"],
)
def test_a_reply_setting_that_cannot_work_fails_the_task_without_retries(
    world: World, tmp_path: Path, kind: str
) -> None:
    kwargs, error, message = _reply_config_cases(world, tmp_path)[kind]
    with pytest.raises(AirflowFailException) as raised:
        world.execute(world.reply_op(**kwargs))
    # Still the error it was, word for word.
    assert isinstance(raised.value, error)
    assert str(raised.value) == message


def test_a_whippy_draft_sequence_fails_the_task_without_retries(world: World) -> None:
    draft = world.whippy.add_sequence("Draft", steps=["sms"], status="draft")
    with pytest.raises(AirflowFailException, match="is a draft and accepts no contacts") as raised:
        world.execute(
            world.whippy_op(sequence_id=draft, contacts=[_whippy_row(1)], column_map={"phone": "phone"})
        )
    assert isinstance(raised.value, SyncConfigurationError)


def test_sql_from_a_connection_that_is_no_database_fails_without_retries(world: World) -> None:
    operator = world.reply_op(sql="SELECT 1", source_conn_id="reply_default", column_map={"email": "email"})
    since = (len(world.reply.requests), len(world.whippy.requests))
    with pytest.raises(AirflowFailException) as raised:
        world.execute(operator)
    assert str(raised.value) == (
        "source_conn_id 'reply_default' is a 'reply' connection, not a database: sql needs a "
        "connection whose hook is a DbApiHook (postgres, sqlite, mysql, ...)"
    )
    assert world.writes(*since) == []


def test_a_file_not_there_yet_is_retried(world: World, tmp_path: Path) -> None:
    operator = world.reply_op(source_path=str(tmp_path / "later.csv"), column_map={"email": "email"})
    with pytest.raises(SourceError) as raised:
        world.execute(operator)
    assert not isinstance(raised.value, AirflowFailException)


def test_connection_ids_are_templated(world: World) -> None:
    operator = world.reply_op(
        contacts=[ok_row(next(_run_ids))],
        column_map={"email": "email"},
        reply_conn_id="{{ params.service }}_default",
        state_conn_id="{{ params.state }}",
    )
    operator.render_template_fields({"params": {"service": "reply", "state": STATE_CONN}})
    assert operator.reply_conn_id == "reply_default"
    assert len(world.execute(operator)["added"]) == 1


def test_deferrable_follows_airflows_default_deferrable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        from airflow.sdk.exceptions import TaskDeferred
    except ImportError:  # Airflow 3.1
        from airflow.exceptions import TaskDeferred  # type: ignore[no-redef]

    assert world.whippy_op(contacts=[_whippy_row(1)], column_map={"phone": "phone"}).deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    operator = world.whippy_op(contacts=[_whippy_row(next(_run_ids))], column_map={"phone": "phone"})
    with pytest.raises(TaskDeferred):
        world.execute(operator)
    # An explicit setting wins over Airflow's default.
    assert world.whippy_op(contacts=[], column_map={"phone": "phone"}, deferrable=False).deferrable is False
