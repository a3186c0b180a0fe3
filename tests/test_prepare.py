"""The prepare stage: mapping, normalising and checking one chunk of source rows."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pytest
from email_validator import validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_sequences.sync import outcomes
from airflow_provider_sequences.sync.contract import FieldRules
from airflow_provider_sequences.sync.phones import _phones_fast as phones_fast
from airflow_provider_sequences.sync.prepare import (
    EMAIL_FAST_PATTERN,
    EMAIL_SLOW_PATTERN,
    WHITESPACE,
    Prepared,
    PrepareSpec,
    check_columns,
    check_phone,
    normalise_phones,
    prepare_chunk,
    validate_column_map,
)

REPLY = FieldRules(
    known_fields=frozenset(
        {"email", "firstName", "lastName", "phone", "title", "company", "city", "state", "country"}
    ),
    prefixes=frozenset({"customFields"}),
    email_fields=frozenset({"email"}),
    phone_fields=frozenset({"phone"}),
    integer_fields=frozenset(),
    required=frozenset({"email"}),
    service="Reply",
)
REPLY_BY_ID = FieldRules(
    known_fields=REPLY.known_fields,
    prefixes=REPLY.prefixes,
    email_fields=REPLY.email_fields,
    phone_fields=REPLY.phone_fields,
    integer_fields=frozenset(),
)
WHIPPY = FieldRules(
    known_fields=frozenset({"phone", "email", "name", "external_id", "language"}),
    prefixes=frozenset({"address", "birth_date", "properties"}),
    email_fields=frozenset({"email"}),
    phone_fields=frozenset({"phone"}),
    integer_fields=frozenset({"birth_date.day", "birth_date.month", "birth_date.year"}),
    required=frozenset({"phone"}),
)
NO_CHECKS = FieldRules(
    known_fields=frozenset({"name", "title"}),
    prefixes=frozenset(),
    email_fields=frozenset(),
    phone_fields=frozenset(),
    integer_fields=frozenset(),
)

MISSING_VALUES = [None, float("nan"), pd.NA, "", "   ", "\t\n", "\u3000"]
E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def column(values: list[Any]) -> pd.Series:
    """A column exactly as given: object dtype, no inference."""
    return pd.Series(values, dtype=object)


def run(
    data: dict[str, list[Any]],
    column_map: dict[str, str],
    *,
    rules: FieldRules = NO_CHECKS,
    key: str = "id",
    first_row: int = 0,
    **options: Any,
) -> Prepared:
    frame = pd.DataFrame({name: column(values) for name, values in data.items()})
    spec = PrepareSpec(column_map=column_map, key_column=key, rules=rules, **options)
    return prepare_chunk(frame, spec, first_row=first_row)


def only_rejection(prepared: Prepared) -> tuple[str, str, str]:
    assert len(prepared.rejected) == 1, prepared.rejected
    assert prepared.contacts.empty
    return prepared.rejected[0]


def whippy(phone: Any, **fields: Any) -> Prepared:
    data = {"id": ["k"], "tel": [phone]}
    column_map = {"tel": "phone"}
    for name, value in fields.items():
        data[name] = [value]
        column_map[name] = name.replace("__", ".")
    return run(data, column_map, rules=WHIPPY, default_region="US")


# --- validate_column_map / check_columns / PrepareSpec ------------------------------------------


def test_unknown_field_lists_the_accepted_fields_and_prefixes():
    with pytest.raises(ValueError, match="unknown field") as raised:
        validate_column_map({"mail": "emial"}, REPLY)
    message = str(raised.value)
    assert message.startswith("column_map maps 'mail' to unknown field 'emial'; Reply fields are: city, ")
    assert "company, country, email, firstName" in message
    assert "customFields.<name>" in message


@pytest.mark.parametrize("target", ["customFields", "customFields.", "notes.Tier", "address"])
def test_dotted_fields_need_a_known_prefix_and_a_name(target):
    rules = WHIPPY if target == "address" else REPLY
    with pytest.raises(ValueError, match="unknown field"):
        validate_column_map({"a": target, "tel": "phone", "mail": "email"}, rules)


def test_fields_under_a_prefix_and_typed_fields_are_accepted():
    validate_column_map({"mail": "email", "tier": "customFields.Tier", "t": "title"}, REPLY)
    validate_column_map(
        {"tel": "phone", "day": "birth_date.day", "town": "address.city", "p": "properties.plan"}, WHIPPY
    )


def test_two_columns_for_one_field_are_refused():
    with pytest.raises(ValueError, match="maps both 'a' and 'b' to field 'email'"):
        validate_column_map({"a": "email", "b": "email"}, REPLY)


def test_a_required_field_must_be_mapped():
    with pytest.raises(ValueError, match="maps no column to 'phone'"):
        validate_column_map({"mail": "email"}, WHIPPY)
    validate_column_map({"first": "firstName"}, REPLY_BY_ID)  # contact ids: email optional


def test_check_columns_names_the_missing_column_and_the_source_columns():
    spec = PrepareSpec(column_map={"emial": "email"}, key_column="a", rules=REPLY)
    with pytest.raises(ValueError, match="no column 'emial'") as raised:
        check_columns(["a", "b", "c"], spec)
    assert str(raised.value) == (
        "the source has no column 'emial' (mapped in column_map); its columns are: a, b, c"
    )


def test_check_columns_covers_the_key_and_id_columns():
    spec = PrepareSpec(column_map={"a": "email"}, key_column="crm", rules=REPLY_BY_ID, id_column="rid")
    with pytest.raises(ValueError, match=r"no columns 'crm' \(the key column\), 'rid' \(the id column\)"):
        check_columns(["a"], spec)
    check_columns(["a", "crm", "rid"], spec)


def test_prepare_chunk_checks_the_columns_first():
    with pytest.raises(ValueError, match="the source has no column 'nope'"):
        run({"id": [1]}, {"nope": "name"})


def test_an_unknown_default_region_is_refused():
    with pytest.raises(ValueError, match="default_region 'XX'"):
        PrepareSpec(column_map={}, key_column="id", rules=NO_CHECKS, default_region="XX")


# --- rows and keys -----------------------------------------------------------------------------


def test_rows_are_source_positions_and_output_columns_follow_the_map():
    prepared = run(
        {"id": ["a", "b", "c"], "n": ["x", "y", "z"], "t": ["p", "q", "r"]},
        {"t": "title", "n": "name"},
        first_row=1000,
    )
    contacts = prepared.contacts
    assert list(contacts.columns) == ["key", "row", "title", "name"]
    assert contacts["row"].tolist() == [1000, 1001, 1002]
    assert contacts["row"].dtype == np.int64
    assert contacts["key"].tolist() == ["a", "b", "c"]
    assert list(contacts.index) == [0, 1, 2]
    assert prepared.rejected == []


def test_keys_are_trimmed_text_and_integral_floats_lose_their_point():
    prepared = run({"id": [" k1 ", 1.0, 1.5e9, 7, 2.5, True]}, {})
    assert prepared.contacts["key"].tolist() == ["k1", "1", "1500000000", "7", "2.5", "True"]


def test_keys_from_a_float_column():
    frame = pd.DataFrame({"id": [1.0, 1.5e9, float("nan")]})
    spec = PrepareSpec(column_map={}, key_column="id", rules=NO_CHECKS)
    prepared = prepare_chunk(frame, spec, first_row=5)
    assert prepared.contacts["key"].tolist() == ["1", "1500000000"]
    assert prepared.rejected == [("row:7", outcomes.MISSING_KEY, "row 7 has no value in the key column 'id'")]


@pytest.mark.parametrize("missing", MISSING_VALUES)
def test_a_missing_key_is_rejected_with_the_row_position(missing):
    prepared = run({"id": ["a", missing], "n": ["x", "y"]}, {"n": "name"}, first_row=40)
    assert prepared.contacts["key"].tolist() == ["a"]
    assert prepared.rejected == [
        ("row:41", outcomes.MISSING_KEY, "row 41 has no value in the key column 'id'")
    ]
    assert prepared.rejected_rows == [41]


def test_an_email_key_is_the_normalised_email():
    prepared = run({"mail": ["  Ada@Example.COM "]}, {"mail": "email"}, rules=REPLY, key="mail")
    assert prepared.contacts["key"].tolist() == ["ada@example.com"]
    assert prepared.contacts["email"].tolist() == ["ada@example.com"]


def test_a_rejected_email_key_is_trimmed_and_lowercased():
    prepared = run({"mail": ["  Ada@@Example "]}, {"mail": "email"}, rules=REPLY, key="mail")
    key, reason, _ = only_rejection(prepared)
    assert (key, reason) == ("ada@@example", outcomes.INVALID_EMAIL)


def test_a_phone_key_is_the_e164_number():
    prepared = run(
        {"tel": ["(415) 555-0123"]}, {"tel": "phone"}, rules=WHIPPY, key="tel", default_region="US"
    )
    assert prepared.contacts["key"].tolist() == ["+14155550123"]


def test_no_deduplication_here():
    prepared = run({"id": ["a", "a", " a"], "n": ["x", "y", "z"]}, {"n": "name"})
    assert prepared.contacts["key"].tolist() == ["a", "a", "a"]
    assert prepared.contacts["row"].tolist() == [0, 1, 2]


def test_an_empty_chunk():
    frame = pd.DataFrame({"id": pd.Series([], dtype=object), "tel": pd.Series([], dtype=object)})
    spec = PrepareSpec(column_map={"tel": "phone"}, key_column="id", rules=WHIPPY, default_region="US")
    prepared = prepare_chunk(frame, spec, first_row=0)
    assert list(prepared.contacts.columns) == ["key", "row", "phone"]
    assert prepared.contacts.empty
    assert prepared.rejected == []


# --- text fields ---------------------------------------------------------------------------------


def test_text_is_trimmed_and_blank_text_is_missing():
    prepared = run(
        {"id": list("abcdefgh"), "n": [" Ada ", "\u3000Grace\t", *MISSING_VALUES[:6]]}, {"n": "name"}
    )
    assert prepared.contacts["name"].tolist() == ["Ada", "Grace", None, None, None, None, None, None]
    assert prepared.contacts["name"].dtype == object


def test_numbers_in_text_fields_have_no_spurious_point():
    prepared = run({"id": list("abcdef"), "n": [1.5e9, 42, 1.5, -3.0, 1e20, float("inf")]}, {"n": "name"})
    assert prepared.contacts["name"].tolist() == [
        "1500000000",
        "42",
        "1.5",
        "-3",
        "100000000000000000000",
        "inf",
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (pd.Series([1.0, 2.5, None], dtype="float64"), ["1", "2.5", None]),
        (pd.Series([1, 2, None], dtype="Int64"), ["1", "2", None]),
        (pd.Series([1, 2, 3], dtype="int64"), ["1", "2", "3"]),
        (pd.Series([" a", None, ""], dtype="str"), ["a", None, None]),
        (pd.Series([" a", None, ""], dtype="string"), ["a", None, None]),
        (pd.Series(["x ", "y", None], dtype="category"), ["x", "y", None]),
        (pd.Series([True, False, True]), ["True", "False", "True"]),
    ],
)
def test_every_column_dtype_becomes_text(values, expected):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "n": values})
    spec = PrepareSpec(column_map={"n": "name"}, key_column="id", rules=NO_CHECKS)
    assert prepare_chunk(frame, spec, first_row=0).contacts["name"].tolist() == expected


def test_a_text_field_over_the_limit_is_rejected():
    prepared = whippy("+14155550123", name="x" * 301)
    assert only_rejection(prepared) == (
        "k",
        outcomes.FIELD_TOO_LONG,
        "name is 301 characters; the service accepts at most 255",
    )
    assert len(whippy("+14155550123", name="x" * 255).contacts) == 1
    assert len(whippy("+14155550123", name=" " + "x" * 255 + " ").contacts) == 1


def test_length_counts_characters_and_names_the_service():
    prepared = run(
        {"id": ["a", "b"], "mail": ["a@b.io", "b@b.io"], "t": ["é" * 256, "日本" * 100]},
        {"mail": "email", "t": "customFields.Note"},
        rules=REPLY,
    )
    assert prepared.rejected == [
        ("a", outcomes.FIELD_TOO_LONG, "customFields.Note is 256 characters; Reply accepts at most 255")
    ]


def test_no_length_limit():
    rules = FieldRules(
        known_fields=frozenset({"name"}),
        prefixes=frozenset(),
        email_fields=frozenset(),
        phone_fields=frozenset(),
        integer_fields=frozenset(),
        max_length=None,
    )
    assert len(run({"id": ["a"], "n": ["x" * 10_000]}, {"n": "name"}, rules=rules).contacts) == 1


# --- emails --------------------------------------------------------------------------------------


def test_emails_are_trimmed_and_lowercased():
    prepared = run(
        {"id": list("abc"), "mail": ["  Ada.Lovelace@Example.COM ", "grace+tag@navy.mil", None]},
        {"mail": "email"},
        rules=REPLY_BY_ID,
    )
    assert prepared.contacts["email"].tolist() == ["ada.lovelace@example.com", "grace+tag@navy.mil", None]


def test_international_emails_use_the_validator_normal_form():
    prepared = run(
        {"id": ["a", "b"], "mail": ["Bé@EXÄMPLE.com", "用户@例子.广告"]}, {"mail": "email"}, rules=REPLY
    )
    assert prepared.contacts["email"].tolist() == ["bé@exämple.com", "用户@例子.广告"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ada@@example", "The part after the @-sign contains invalid characters"),
        ("ada.example.com", "must have an @-sign"),
        ("ada@example", "It should have a period"),
        ("ada@mail.test", "special-use or reserved name"),
        ("ada..l@example.com", "two periods in a row"),
        ("a b@example.com", "invalid character"),
    ],
)
def test_an_invalid_email_is_rejected_with_the_validator_message(value, message):
    prepared = run({"id": ["k"], "mail": [f" {value} "]}, {"mail": "email"}, rules=REPLY)
    key, reason, detail = only_rejection(prepared)
    assert (key, reason) == ("k", outcomes.INVALID_EMAIL)
    assert detail.startswith(f"{value!r} is not a valid email: ")
    assert message in detail


@pytest.mark.parametrize("missing", MISSING_VALUES)
def test_a_missing_required_email(missing):
    prepared = run({"id": ["k"], "mail": [missing]}, {"mail": "email"}, rules=REPLY)
    assert only_rejection(prepared) == ("k", outcomes.MISSING_EMAIL, "email is empty (column 'mail')")


def test_a_missing_optional_email_is_none():
    prepared = run({"id": ["k"], "mail": [float("nan")]}, {"mail": "email"}, rules=REPLY_BY_ID)
    assert prepared.contacts["email"].tolist() == [None]


# --- phones -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["+1 415 555 0123", "+14155550123", "(415) 555-0123", "415.555.0123", "4155550123", 4155550123.0],
)
def test_phones_become_e164(value):
    assert whippy(value).contacts["phone"].tolist() == ["+14155550123"]


def test_international_numbers_ignore_the_default_region():
    assert whippy("+44 20 7946 0018").contacts["phone"].tolist() == ["+442079460018"]


def test_national_formats_of_other_regions():
    prepared = run(
        {"id": ["a", "b"], "tel": ["020 7946 0018", "07911 123456"]},
        {"tel": "phone"},
        rules=WHIPPY,
        default_region="gb",
    )
    assert prepared.contacts["phone"].tolist() == ["+442079460018", "+447911123456"]


def test_a_number_without_country_code_needs_a_default_region():
    prepared = run({"id": ["k"], "tel": ["4155550123"]}, {"tel": "phone"}, rules=WHIPPY)
    assert only_rejection(prepared) == (
        "k",
        outcomes.INVALID_PHONE,
        "'4155550123' has no country code; set default_region or use +<country code>",
    )


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("call me", "'call me' is not a phone number: it contains letters"),
        ("+1 415 555 0123 ext 4", "contains letters"),
        ("1-800-FLOWERS", "contains letters"),
        ("123", "'123' is not a valid US phone number"),
        ("5", "'5' is not a phone number"),
        ("+1 123 456 7890", "'+1 123 456 7890' is not a valid phone number"),
        ("+999 1234 5678", "'+999 1234 5678' has no known country code"),
        ("555-0123", "numbers from other countries need +<country code>"),
    ],
)
def test_an_invalid_phone_says_why(value, detail):
    key, reason, text = only_rejection(whippy(value))
    assert (key, reason) == ("k", outcomes.INVALID_PHONE)
    assert detail in text


@pytest.mark.parametrize(("value", "digits"), [("+49 30 1234567890123", 17), ("+43 1117", 6)])
def test_phones_outside_e164_lengths_are_rejected(value, digits):
    # Valid for phonenumbers, but E.164 (and the property the services rely on) allows 7 to 15.
    assert phonenumbers.is_valid_number(phonenumbers.parse(value))
    assert only_rejection(whippy(value)) == (
        "k",
        outcomes.INVALID_PHONE,
        f"{value!r} is not a valid phone number: it has {digits} digits and E.164 allows 7 to 15",
    )


@pytest.mark.parametrize("missing", MISSING_VALUES)
def test_a_missing_required_phone(missing):
    assert only_rejection(whippy(missing)) == ("k", outcomes.MISSING_PHONE, "phone is empty (column 'tel')")


def test_a_missing_optional_phone_is_none():
    prepared = run(
        {"id": ["k"], "mail": ["a@b.io"], "tel": ["  "]}, {"mail": "email", "tel": "phone"}, rules=REPLY
    )
    assert prepared.contacts["phone"].tolist() == [None]


def _example_numbers() -> list[str]:
    values = []
    formats = (
        phonenumbers.PhoneNumberFormat.E164,
        phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        phonenumbers.PhoneNumberFormat.NATIONAL,
    )
    types = [getattr(phonenumbers.PhoneNumberType, name) for name in ("FIXED_LINE", "MOBILE", "TOLL_FREE")]
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in types:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            for form in formats:
                text = phonenumbers.format_number(example, form)
                values += [text, text[:-1], text + "9", text[:-1] + str((int(text[-1]) + 5) % 10)]
    return values


@pytest.mark.parametrize("region", [None, "US", "GB", "DE", "FR", "AU", "IT", "AR", "JP"])
def test_the_metadata_fast_path_agrees_with_phonenumbers(region):
    values = _example_numbers()
    e164, fast = phones_fast(pa.array(values, type=pa.large_string()), region)
    assert fast.mean() > 0.3  # most numbers are settled without phonenumbers.parse
    for value, number, settled in zip(values, e164, fast, strict=True):
        if settled:
            assert (number, None) == check_phone(value, region), value
    normalised = normalise_phones(pa.array(values, type=pa.large_string()), region)
    assert normalised.values.tolist() == [check_phone(value, region)[0] for value in values]


# --- integer fields and contact ids --------------------------------------------------------------


def test_integer_fields_take_whole_numbers():
    prepared = run(
        {
            "id": list("abcdef"),
            "tel": ["+14155550123"] * 6,
            "day": ["12", 12, 12.0, " 7 ", None, "1e1"],
        },
        {"tel": "phone", "day": "birth_date.day"},
        rules=WHIPPY,
    )
    assert prepared.contacts["birth_date.day"].tolist() == [12, 12, 12, 7, pd.NA, 10]
    assert prepared.contacts["birth_date.day"].dtype == "Int64"


@pytest.mark.parametrize("value", [12.5, "x", "12.5", "nan", float("inf"), "99999999999999999999"])
def test_an_integer_field_that_is_not_a_whole_number(value):
    key, reason, detail = only_rejection(whippy("+14155550123", birth_date__day=value))
    assert (key, reason) == ("k", outcomes.INVALID_FIELD)
    assert detail.startswith("birth_date.day must be a whole number; got ")


def run_ids(ids: list[Any]) -> Prepared:
    return run(
        {"crm": [f"c{i}" for i in range(len(ids))], "rid": ids, "n": ["x"] * len(ids)},
        {"n": "firstName"},
        rules=REPLY_BY_ID,
        key="crm",
        id_column="rid",
    )


def test_contact_ids_are_positive_integers():
    prepared = run_ids(["123", 123, 123.0, 1.5e9, " 7 ", "1.5e9"])
    assert prepared.contacts["id"].tolist() == [123, 123, 123, 1_500_000_000, 7, 1_500_000_000]
    assert prepared.contacts["id"].dtype == np.int64
    assert list(prepared.contacts.columns) == ["key", "row", "id", "firstName"]


@pytest.mark.parametrize("value", [-5, 0, 1.5, "abc", "-1", 2.0**64])
def test_an_invalid_contact_id(value):
    key, reason, detail = only_rejection(run_ids([value]))
    assert (key, reason) == ("c0", outcomes.INVALID_CONTACT_ID)
    assert "in column 'rid' is not a positive integer" in detail


@pytest.mark.parametrize("missing", MISSING_VALUES)
def test_a_missing_contact_id(missing):
    assert only_rejection(run_ids([missing])) == (
        "c0",
        outcomes.INVALID_CONTACT_ID,
        "the id column 'rid' is empty",
    )


def test_a_float_id_column():
    frame = pd.DataFrame({"crm": ["a", "b", "c"], "rid": [1.0, float("nan"), 2.5]})
    spec = PrepareSpec(column_map={}, key_column="crm", rules=REPLY_BY_ID, id_column="rid")
    prepared = prepare_chunk(frame, spec, first_row=0)
    assert prepared.contacts["id"].tolist() == [1]
    assert [reason for _, reason, _ in prepared.rejected] == [outcomes.INVALID_CONTACT_ID] * 2


# --- order of checks ----------------------------------------------------------------------------


def test_one_reason_per_row_the_first_failing_check_wins():
    prepared = run(
        {
            "id": [None, "b", "c", "d", "e", "f", "g"],
            "rid": ["x", "x", 5, 5, 5, 5, 5],
            "tel": ["bad", "bad", None, "bad", "bad", "+14155550123", "+14155550123"],
            "mail": ["@", "@", "@", "@", "a@b.io", "a@b.io", "a@b.io"],
            "day": ["x", "x", "x", "x", "x", "x", "1"],
            "n": ["x" * 300] * 7,
        },
        {"tel": "phone", "mail": "email", "day": "birth_date.day", "n": "name"},
        rules=WHIPPY,
        id_column="rid",
        default_region="US",
    )
    assert [(key, reason) for key, reason, _ in prepared.rejected] == [
        ("row:0", outcomes.MISSING_KEY),
        ("b", outcomes.INVALID_CONTACT_ID),
        ("c", outcomes.MISSING_PHONE),
        ("d", outcomes.INVALID_EMAIL),
        ("e", outcomes.INVALID_PHONE),
        ("f", outcomes.INVALID_FIELD),
        ("g", outcomes.FIELD_TOO_LONG),
    ]


def test_a_bad_row_does_not_affect_the_others():
    good = {"id": "g", "tel": "+14155550123", "mail": "A@B.io"}
    bad = {"id": "b", "tel": "nope", "mail": "@@"}
    rows = [good, bad, good, bad]
    prepared = run(
        {name: [row[name] for row in rows] for name in good}, {"tel": "phone", "mail": "email"}, rules=WHIPPY
    )
    assert prepared.contacts["row"].tolist() == [0, 2]
    assert prepared.contacts["email"].tolist() == ["a@b.io", "a@b.io"]
    assert [reason for _, reason, _ in prepared.rejected] == [outcomes.INVALID_EMAIL] * 2


def test_missing_field_reason_for_other_required_fields():
    rules = FieldRules(
        known_fields=frozenset({"name"}),
        prefixes=frozenset(),
        email_fields=frozenset(),
        phone_fields=frozenset(),
        integer_fields=frozenset(),
        required=frozenset({"name"}),
    )
    prepared = run({"id": ["k"], "n": [" "]}, {"n": "name"}, rules=rules)
    assert only_rejection(prepared) == ("k", outcomes.MISSING_FIELD, "name is empty (column 'n')")
    assert outcomes.MISSING_FIELD in outcomes.DATA_REASONS


# --- internals the speed relies on --------------------------------------------------------------


def test_whitespace_is_what_str_strip_removes():
    expected = {chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()}
    assert set(WHITESPACE) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(EMAIL_FAST_PATTERN, fullmatch=True))
def test_fast_email_pattern_only_passes_what_email_validator_keeps(address):
    if re.search(EMAIL_SLOW_PATTERN, address) or len(address) > 254:
        return
    assert validate_email(address, check_deliverability=False).normalized == address


# --- properties ---------------------------------------------------------------------------------

cells = st.one_of(
    st.none(),
    st.just(pd.NA),
    st.text(max_size=12),
    st.text(alphabet=" \t\n\u3000\xa0", max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.booleans(),
)
good_keys = st.one_of(st.integers(), st.text(alphabet="abc123 ", min_size=1, max_size=6))
good_phones = st.sampled_from(
    ["+1 415 555 0123", "(415) 555-0123", "020 7946 0018", "+44 7911 123456", 4155550123.0]
)
# Valid values are drawn more often than junk, so that accepted rows get checked too.
keys = st.one_of(good_keys, good_keys, st.text(max_size=8), cells)
emails = st.one_of(
    st.none(),
    st.none(),
    st.emails().map(lambda address: f" {address.upper()} "),
    st.sampled_from(["Ada@Example.com", "ada@@example", "bé@exämple.com", "x@localhost"]),
    cells,
)
phones = st.one_of(
    good_phones,
    good_phones,
    st.from_regex(r"\+?[0-9 ().\-]{3,18}", fullmatch=True),
    cells,
)
days = st.one_of(st.none(), st.integers(min_value=1, max_value=31), cells)
junk_rows = st.fixed_dictionaries({"id": keys, "mail": emails, "tel": phones, "n": cells, "day": days})
good_rows = st.fixed_dictionaries(
    {
        "id": good_keys,
        "mail": st.one_of(st.none(), st.emails().map(lambda address: f" {address.upper()} ")),
        "tel": good_phones,
        "n": st.one_of(st.none(), st.text(max_size=12), st.floats()),
        "day": st.one_of(st.none(), st.integers(min_value=1, max_value=31)),
    }
)
rows = st.lists(st.one_of(good_rows, junk_rows), max_size=12)


def reference_text(value: Any) -> str | None:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        value = str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None


def prepare_rows(records: list[dict[str, Any]], first_row: int = 0, *, infer: bool = False) -> Prepared:
    names = ["id", "mail", "tel", "n", "day"]
    if infer:
        frame = pd.DataFrame({name: [record[name] for record in records] for name in names})
    else:
        frame = pd.DataFrame({name: column([record[name] for record in records]) for name in names})
    spec = PrepareSpec(
        column_map={"mail": "email", "tel": "phone", "n": "name", "day": "birth_date.day"},
        key_column="id",
        rules=WHIPPY,
        default_region="US",
    )
    return prepare_chunk(frame, spec, first_row=first_row)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows, st.integers(min_value=0, max_value=10**9), st.booleans())
def test_every_row_is_accepted_or_rejected_exactly_once(records, first_row, infer):
    prepared = prepare_rows(records, first_row, infer=infer)
    contacts = prepared.contacts
    accepted = contacts["row"].tolist()
    assert accepted == sorted(set(accepted))
    assert len(contacts) + len(prepared.rejected) == len(records)
    rejected_rows = sorted(set(range(first_row, first_row + len(records))) - set(accepted))
    assert prepared.rejected_rows == rejected_rows
    for row, (key, reason, detail) in zip(rejected_rows, prepared.rejected, strict=True):
        expected_key = reference_text(records[row - first_row]["id"])
        assert key == (f"row:{row}" if expected_key is None else expected_key)
        assert (reason == outcomes.MISSING_KEY) == (expected_key is None)
        assert reason in outcomes.DATA_REASONS
        assert detail
    for row, key in zip(accepted, contacts["key"].tolist(), strict=True):
        assert key == reference_text(records[row - first_row]["id"])
    for email in contacts["email"].tolist():
        assert email is None or (email == email.strip() and email == email.lower() and "@" in email)
    for phone in contacts["phone"].tolist():
        assert isinstance(phone, str)
        assert E164.fullmatch(phone)
    for name in contacts["name"].tolist():
        assert name is None or (name == name.strip() and 0 < len(name) <= 255)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows, st.integers(min_value=0, max_value=12))
def test_the_same_input_gives_the_same_output_however_it_is_chunked(records, split):
    whole = prepare_rows(records)
    again = prepare_rows(records)
    pd.testing.assert_frame_equal(whole.contacts, again.contacts)
    assert whole.rejected == again.rejected
    split = min(split, len(records))
    head = prepare_rows(records[:split])
    tail = prepare_rows(records[split:], first_row=split)
    assert head.rejected + tail.rejected == whole.rejected
    assert head.rejected_rows + tail.rejected_rows == whole.rejected_rows
    joined = pd.concat([head.contacts, tail.contacts], ignore_index=True)
    assert joined.astype(object).to_dict("list") == whole.contacts.astype(object).to_dict("list")


def test_reply_import_items_leave_out_every_kind_of_missing_value() -> None:
    """Prepared rows become Reply import items: a missing value (None, NA, NaN) is left out
    rather than sent as null, and custom fields become Reply's name/value list."""
    from airflow_provider_sequences.adapters.reply import contact_items

    batch = pd.DataFrame(
        {
            "key": ["a@x.io", "b@x.io", "c@x.io"],
            "email": pd.array(["a@x.io", "b@x.io", "c@x.io"], dtype="string[pyarrow]"),
            "firstName": pd.array(["Ann", None, "Cé"], dtype="string[pyarrow]"),
            "company": [None, "Acme", float("nan")],
            "customFields.Tier": pd.array([pd.NA, "gold", "silver"], dtype="string[pyarrow]"),
            "row": [0, 1, 2],
        }
    )
    assert contact_items(batch) == [
        {"email": "a@x.io", "firstName": "Ann"},
        {"email": "b@x.io", "company": "Acme", "customFields": [{"name": "Tier", "value": "gold"}]},
        {"email": "c@x.io", "firstName": "Cé", "customFields": [{"name": "Tier", "value": "silver"}]},
    ]
    assert contact_items(batch.iloc[:0]) == []
