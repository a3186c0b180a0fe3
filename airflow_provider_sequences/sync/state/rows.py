"""The state table's rows, built one way for every kind of outcome.

Columns are assembled whole and zipped into rows (constants repeated): a large run records a
row per key, and added keys, the most of them, need no object of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

from airflow_provider_sequences.sync.values import (
    ADDED,
    PENDING,
    SENDING,
    AddedKeys,
    KeyOutcome,
    PendingKeys,
    Scope,
)

#: ``json.dumps(identity, sort_keys=True)`` without building an encoder per call (a run
#: stores an identity per pending key).
identity_json = json.JSONEncoder(sort_keys=True).encode


def state_rows(
    scope: Scope,
    run_id: str,
    now: Any,
    outcomes: Iterable[KeyOutcome],
    added: AddedKeys | None = None,
    pending: PendingKeys | None = None,
) -> list[tuple[Any, ...]]:
    """State rows as tuples in the compiled upsert's column order
    (:data:`~.tables.STATE_COLUMNS`): ``added`` keys, then ``pending`` keys, then ``outcomes``.

    ``now`` is the moment, already in the driver's form; a key's attempts grow by one per send.
    """
    rows: list[tuple[Any, ...]] = []
    if added is not None:
        keys = added.contact_ids.keys()
        rows += _rows(
            scope,
            run_id,
            now,
            keys,
            ADDED,
            fingerprints=map(added.fingerprints.get, keys),
            contact_ids=added.contact_ids.values(),
            attempts=1 if added.sent else 0,
        )
    if pending is not None:
        keys = pending.identities.keys()
        rows += _rows(
            scope,
            run_id,
            now,
            keys,
            PENDING,
            fingerprints=map(pending.fingerprints.get, keys),
            identities=[
                identity_json(identity) if identity else None for identity in pending.identities.values()
            ],
            attempts=1 if pending.sent else 0,
        )
    listed = outcomes if isinstance(outcomes, list) else list(outcomes)
    if listed:
        rows += _rows(
            scope,
            run_id,
            now,
            [o.key for o in listed],
            [o.status for o in listed],
            reasons=[o.reason for o in listed],
            details=[o.detail for o in listed],
            fingerprints=[o.fingerprint for o in listed],
            contact_ids=[o.service_contact_id for o in listed],
            identities=[identity_json(o.identity) if o.identity else None for o in listed],
            attempts=[1 if o.sent or o.status == SENDING else 0 for o in listed],
        )
    return rows


def _rows(
    scope: Scope,
    run_id: str,
    now: Any,
    keys: Iterable[str],
    status: str | Iterable[str],
    *,
    reasons: Iterable[str | None] | None = None,
    details: Iterable[str | None] | None = None,
    fingerprints: Iterable[str | None] | None = None,
    contact_ids: Iterable[str | None] | None = None,
    identities: Iterable[str | None] | None = None,
    attempts: int | Iterable[int],
) -> Iterator[tuple[Any, ...]]:
    """One row per key; a column given as one value (or ``None``) holds it in every row."""
    return zip(
        repeat(scope.service),
        repeat(scope.account),
        repeat(scope.sequence_id),
        keys,
        _column(status),
        _column(reasons),
        _column(details),
        _column(fingerprints),
        _column(contact_ids),
        _column(identities),
        _column(attempts),
        repeat(run_id),
        repeat(run_id),
        repeat(now),
        repeat(now),
    )


def _column(values: Any) -> Iterable[Any]:
    return repeat(values) if values is None or isinstance(values, (str, int)) else values  # type: ignore[no-any-return]
