"""Synthetic CRM exports: realistic rows, a share of them bad in the ways real exports are."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim", "Margaret"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lee"]
COMPANIES = ["Initech", "Globex", "Umbrella", "Hooli", "Stark Industries", "Wayne Enterprises", "Acme"]
TITLES = ["CTO", "VP Engineering", "Head of Data", "Data Engineer", "Analytics Lead", "CEO"]
CITIES = [("San Francisco", "US"), ("New York", "US"), ("Austin", "US"), ("Toronto", "CA"), ("Chicago", "US")]
STAGES = ["lead"] * 9 + ["customer"]
CRM_TABLE = "crm_contacts"


def crm_frame(rows: int, *, seed: int = 7, bad_share: float = 0.02, first_id: int = 1) -> pd.DataFrame:
    """A CRM export of ``rows`` contacts; about ``bad_share`` of them carry a typical defect.

    Defects: a malformed email, a missing email, a phone with letters, a phone without a
    country code in a foreign format, a 300-character name, and duplicated CRM ids.
    """
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + rows)
    first = np.array(FIRST)[rng.integers(0, len(FIRST), rows)]
    last = np.array(LAST)[rng.integers(0, len(LAST), rows)]
    city_index = rng.integers(0, len(CITIES), rows)
    frame = pd.DataFrame(
        {
            "crm_id": [f"crm-{i}" for i in ids],
            "email": [
                f"{f.lower()}.{la.lower()}.{i}@example.com" for f, la, i in zip(first, last, ids, strict=True)
            ],
            "first_name": first,
            "last_name": last,
            "company": np.array(COMPANIES)[rng.integers(0, len(COMPANIES), rows)],
            "job_title": np.array(TITLES)[rng.integers(0, len(TITLES), rows)],
            # Bay Area numbers, unique per id, written the ways CRMs hold them.
            "phone": [_phone(int(i)) for i in ids],
            "city": [CITIES[c][0] for c in city_index],
            "country": [CITIES[c][1] for c in city_index],
            "tier": np.array(["A", "B", "C"])[rng.integers(0, 3, rows)],
            "lifecycle_stage": np.array(STAGES)[rng.integers(0, len(STAGES), rows)],
        }
    )
    bad = rng.random(rows) < bad_share
    kinds = rng.integers(0, 6, rows)
    for kind, column, value in (
        (0, "email", "no-at-sign.example.com"),
        (1, "email", None),
        (2, "phone", "call me maybe"),
        (3, "phone", "12"),
        (4, "first_name", "N" * 300),
    ):
        frame.loc[bad & (kinds == kind), column] = value
    duplicate_rows = np.flatnonzero(bad & (kinds == 5))
    if len(duplicate_rows):
        frame.loc[duplicate_rows, "crm_id"] = frame.loc[
            np.maximum(duplicate_rows - 1, 0), "crm_id"
        ].to_numpy()
    return frame


#: Bay Area codes: each holds 8,000,000 numbers (exchanges 200-999), so ids stay unique to 32M.
AREA_CODES = (415, 628, 650, 510)


def _phone(i: int) -> str:
    area = AREA_CODES[(i // 8_000_000) % len(AREA_CODES)]
    exchange, line = 200 + (i // 10_000) % 800, i % 10_000
    return (
        f"+1 {area}-{exchange}-{line:04d}",
        f"({area}) {exchange}-{line:04d}",
        f"{area}.{exchange}.{line:04d}",
    )[i % 3]


def write_crm_sqlite(path: str | Path, frame: pd.DataFrame, *, table: str = CRM_TABLE) -> Path:
    """Write (replace) the export as a SQLite table, as the nightly CRM job would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:
        frame.to_sql(table, connection, if_exists="replace", index=False, chunksize=50_000)
    return path
