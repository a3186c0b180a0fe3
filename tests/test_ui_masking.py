"""What the Sequence syncs view shows of personal values: emails and phones masked."""

from __future__ import annotations

import pytest

from airflow_provider_sequences.ui.masking import mask_text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("ada.lovelace@example.com", "a\u2022\u2022\u2022@example.com"),
        ("'bob@@x.io' is not a valid email", "'b\u2022\u2022\u2022@x.io' is not a valid email"),
        ("+1 (415) 555-0142", "+\u2022\u2022\u202242"),
        (
            "'07700 900123' is not a valid US phone number",
            "'\u2022\u2022\u202223' is not a valid US phone number",
        ),
        ("crm-2019", "crm-2019"),
        ("'12' is not a valid US phone number", "'12' is not a valid US phone number"),
        (
            "firstName is 300 characters; Reply accepts at most 255",
            "firstName is 300 characters; Reply accepts at most 255",
        ),
        (None, ""),
    ],
)
def test_emails_and_phone_numbers_are_masked_and_the_rest_is_kept(text, shown):
    assert mask_text(text) == shown


def test_the_deployment_may_reveal_them():
    assert mask_text("ada@example.com +14155550142", reveal=True) == "ada@example.com +14155550142"
