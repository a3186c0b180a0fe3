"""What the Sequence syncs view shows of personal values: emails and phones masked exactly as
the logs and XCom mask them (one module, ``sync/masking.py``), unless the run says otherwise.

The texts are what not-processed keys' details and keys hold: refused values, quoted.
"""

from __future__ import annotations

import pytest

from airflow_provider_sequences.ui.app import shown

DOTS = "\u2022\u2022\u2022"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("ada.lovelace@example.com", f"a{DOTS}@example.com"),
        # Refused addresses are what details quote: malformed ones are masked too.
        ("'ada.lovelace@example' is not a valid email", f"'a{DOTS}@example' is not a valid email"),
        ("'bob@@x.io' is not a valid email", f"'b{DOTS}@x.io' is not a valid email"),
        ("+1 (415) 555-0142", f"+1 {DOTS} 0142"),
        ("'07700 900123' is not a valid US phone number", f"'{DOTS} 0123' is not a valid US phone number"),
        ("14155550142", f"{DOTS} 0142"),
        # Ids, counts, dates and run keys are what a person looks for: kept.
        ("crm-2019", "crm-2019"),
        ("The email address must have an @-sign.", "The email address must have an @-sign."),
        ("'12' is not a valid US phone number", "'12' is not a valid US phone number"),
        (
            "firstName is 300 characters; Reply accepts at most 255",
            "firstName is 300 characters; Reply accepts at most 255",
        ),
        ("source row 1000000, 4,000 contacts", "source row 1000000, 4,000 contacts"),
        ("enrol[-1]:scheduled__2026-12-03T02:00:00+00:00", "enrol[-1]:scheduled__2026-12-03T02:00:00+00:00"),
        (None, ""),
    ],
)
def test_the_view_masks_emails_and_phone_numbers_as_the_logs_do(text, masked):
    from airflow_provider_sequences.sync.masking import mask_text

    assert shown(text) == masked
    if text:
        # One masking: what a task log says of this text is what the view shows.
        assert mask_text(text) == masked


def test_a_run_whose_operator_said_so_shows_them():
    assert shown("ada@example.com +14155550142", reveal=True) == "ada@example.com +14155550142"
