"""The plan stage: what each key of a chunk needs, decided from the sync state.

A key is sent (or rejected) in this run, read back first, or settled without a request:
enrolled by an earlier run, refused for data that did not change, out of attempts, carried as
pending, or a sibling shard's. The planner only reads the state; the run applies its plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import pandas as pd

from airflow_provider_sequences.sync.outcomes import PROVIDER_RETRY_WHEN_CHANGED, REQUEST_FAILED
from airflow_provider_sequences.sync.state.null import Store
from airflow_provider_sequences.sync.values import ADDED, NOT_PROCESSED, PENDING, SENDING


class Decision(IntEnum):
    """What the plan does with one key (an ``IntEnum``: the plan is a numpy array of them)."""

    #: Check and send it (or reject it) in this run.
    HANDLE = 0
    #: Settled by an earlier attempt of this run: enrolled, or refused for good.
    DONE = 1
    #: Enrolled by an earlier run: nothing to do.
    UNCHANGED = 2
    #: Its batch may have been applied when a worker died or an answer was lost.
    SENDING = 3
    #: Accepted by an earlier run and not confirmed yet: carried into this run.
    PENDING = 4
    #: Refused for its data, which did not change: reported again without sending.
    AGAIN = 5
    #: A transient failure out of attempts: reported again without sending.
    GIVEN_UP = 6
    #: Recorded last by a sibling shard that is still running: its result reports it.
    ELSEWHERE = 7


@dataclass
class Plan:
    """A chunk's plan, for the run to apply.

    :param handle: keys to check and send (or reject).
    :param check: keys whose batch may have been applied, where sending again is not safe:
        read back first, sent only if not found.
    :param resent: keys that may already be at the service, sent again (see
        :meth:`~airflow_provider_sequences.sync.contract.ServiceAdapter.push`).
    :param carried: keys an earlier run left pending.
    :param repeated: keys reported again without sending: ``key``, ``reason``, ``detail``,
        ``fingerprint``.
    :param stats: counters to add to the run's result.
    """

    handle: set[str]
    check: set[str] = field(default_factory=set)
    resent: list[str] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    repeated: pd.DataFrame | None = None
    stats: dict[str, int] = field(default_factory=dict)


class Planner:
    """Decides, from the state, what each key needs.

    :param store: the state read (a :class:`~.state.null.NullStore` without one).
    :param run_id: this run: keys it settled in an earlier attempt are already in its result.
    :param resync: send every key whatever the state says (a full or non-incremental run).
    :param max_attempts: sends of a key across runs before a transient failure is final.
    :param resend_is_safe: whether the adapter may be handed again a batch that may have been
        applied (else such keys are read back first).
    :param shards: whether sibling shards may sync the scope at once (the run holds a lease).
    :param retry_when_changed: reasons a later run retries only when the row's data changed
        (the provider's and the service's: :func:`~.outcomes.retry_when_changed`).
    """

    def __init__(
        self,
        store: Store,
        run_id: str,
        *,
        resync: bool,
        max_attempts: int,
        resend_is_safe: bool,
        shards: bool,
        retry_when_changed: frozenset[str] = PROVIDER_RETRY_WHEN_CHANGED,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.resync = resync
        self.max_attempts = max_attempts
        self.resend_is_safe = resend_is_safe
        self.shards = shards
        self.retry_when_changed = retry_when_changed

    def plan(self, planned: pd.DataFrame, in_flight: set[str]) -> Plan:
        """The plan of ``planned`` (``key``, ``fingerprint``: first occurrences), given the keys
        of batches this run must resolve (``in_flight``)."""
        everyone = set(planned["key"].tolist())
        if planned.empty:
            return Plan(everyone)
        known = self.store.lookup(planned["key"].tolist())
        if known.empty and in_flight.isdisjoint(everyone):
            return Plan(everyone)
        merged = planned.merge(
            known, how="left", left_on="key", right_on="contact_key", suffixes=("", "_state")
        )
        decision = self._decide(merged, in_flight)
        plan = Plan(set())
        status = merged["status"]
        if self.shards:
            # A key another live run (a sibling shard) recorded last is that run's to finish: its
            # result reports it, and carrying or rejecting it here would take it from that result.
            siblings = self.store.live_runs() - {self.run_id}
            elsewhere = merged["last_run_id"].isin(list(siblings)).to_numpy() if siblings else None
            if elsewhere is not None and elsewhere.any():
                decision = np.where(elsewhere, Decision.ELSEWHERE, decision)
                plan.stats["claimed_by_other_shards"] = int(elsewhere.sum())
                plan.stats["unchanged"] = int(elsewhere.sum())
        if self.resync:
            # Keys an earlier run enrolled: if the service answers "already in the sequence",
            # that is what they are, not a failure to retry on every later run.
            plan.resent.extend(
                merged.loc[(decision == Decision.HANDLE) & (status == ADDED).to_numpy(), "key"].tolist()
            )
        plan.stats["unchanged"] = plan.stats.get("unchanged", 0) + int((decision == Decision.UNCHANGED).sum())
        plan.stats["resumed"] = int((decision == Decision.DONE).sum())

        # A request that failed after retries may still have been applied (its answer lost):
        # like a batch a dead worker left in flight, its keys may be enrolled already.
        failed_send = (decision == Decision.HANDLE) & (
            (status == NOT_PROCESSED) & (merged["reason"] == REQUEST_FAILED)
        )
        decision = np.where(failed_send.to_numpy(), Decision.SENDING, decision)
        sending = merged.loc[decision == Decision.SENDING, "key"].tolist()
        if sending:
            if self.resend_is_safe:
                plan.resent.extend(sending)
                decision = np.where(decision == Decision.SENDING, Decision.HANDLE, decision)
            else:
                plan.check = set(sending)
        plan.carried = merged.loc[decision == Decision.PENDING, "key"].tolist()
        plan.repeated = _repeated(merged, decision)
        plan.handle = set(merged.loc[decision == Decision.HANDLE, "key"].tolist())
        return plan

    def _decide(self, merged: pd.DataFrame, in_flight: set[str]) -> np.ndarray[Any, Any]:
        """A :class:`Decision` per key: the first rule that holds, in the order below."""
        status = merged["status"]
        same_run = merged["last_run_id"] == self.run_id
        data_reason = merged["reason"].isin(list(self.retry_when_changed))
        # Settled by an earlier attempt of this run: enrolled, or refused for good. A transient
        # failure is not settled: the task's retry is there to try it again.
        settled = (status == ADDED) | ((status == NOT_PROCESSED) & data_reason)
        attempts = pd.to_numeric(merged["attempts"], errors="coerce").fillna(0)
        flying = np.fromiter((key in in_flight for key in merged["key"]), dtype=bool, count=len(merged))
        # A key the state records added is enrolled, whatever batch of it was left in flight
        # (a re-send that died, or a row an earlier version left behind): never sent again.
        enrolled = ((status == ADDED) & (not self.resync)).to_numpy()
        rules = [
            ((same_run & settled).to_numpy() & enrolled, Decision.DONE),
            (enrolled & ~same_run.to_numpy(), Decision.UNCHANGED),
            (flying | (status == SENDING).to_numpy(), Decision.SENDING),
            (status.isna(), Decision.HANDLE),
            (same_run & settled, Decision.DONE),
            (status == PENDING, Decision.PENDING),
            (pd.Series(self.resync, index=merged.index), Decision.HANDLE),
            (status == ADDED, Decision.UNCHANGED),
            (data_reason & (merged["fingerprint_state"] == merged["fingerprint"]), Decision.AGAIN),
            (~data_reason & (attempts >= self.max_attempts), Decision.GIVEN_UP),
        ]
        decided: np.ndarray[Any, Any] = np.select(
            [rule for rule, _ in rules], [int(choice) for _, choice in rules], default=int(Decision.HANDLE)
        )
        return decided


#: What the plan appends to a reason's detail when it reports the reason again.
_REPEAT_NOTES = re.compile(r"(?: \((?:unchanged since then|gave up after \d+ attempts)\))+$")


def _first_detail(detail: Any) -> str:
    """A detail as first recorded, without the notes of earlier runs that reported it again."""
    return _REPEAT_NOTES.sub("", detail) if isinstance(detail, str) else ""


def _repeated(merged: pd.DataFrame, decision: np.ndarray[Any, Any]) -> pd.DataFrame | None:
    """The rejections reported again (data unchanged, or out of attempts), or ``None``."""
    again_or_given_up = (decision == Decision.AGAIN) | (decision == Decision.GIVEN_UP)
    again = merged[again_or_given_up]
    if not len(again):
        return None
    given_up = decision[again_or_given_up] == Decision.GIVEN_UP
    details = [
        f"{_first_detail(detail)} (gave up after {int(n)} attempts)"
        if gave_up
        else f"{_first_detail(detail)} (unchanged since then)"
        for detail, n, gave_up in zip(again["detail"], again["attempts"], given_up, strict=True)
    ]
    return pd.DataFrame(
        {
            "key": again["key"],
            "reason": again["reason"],
            "detail": details,
            "fingerprint": again["fingerprint"],
        }
    )
