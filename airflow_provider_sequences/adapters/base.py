"""Helpers the service adapters share (the contract they implement is
:mod:`airflow_provider_sequences.sync.contract`)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from airflow_provider_sequences.hooks.base import SequencesHook
from airflow_provider_sequences.sync.contract import ServiceAdapter


class HookAdapter(ServiceAdapter):
    """An adapter whose every request goes through one of the provider's hooks."""

    #: The service's hook.
    hook: SequencesHook

    @property
    def request_counts(self) -> tuple[int, int]:
        """(write requests, read requests) sent so far."""
        return self.hook.write_requests, self.hook.read_requests


def present(value: Any) -> bool:
    """Whether a prepared field holds a value (not None, NA or NaN) worth sending."""
    if value is None or value is pd.NA:
        return False
    return not (isinstance(value, float) and math.isnan(value))


def column_values(column: pd.Series[Any]) -> list[Any]:
    """A column as plain Python values, ``None`` where missing (NA, NaN), converted at once
    rather than cell by cell as ``DataFrame.to_dict("records")`` does."""
    values: list[Any] = column.astype(object).where(column.notna(), None).tolist()
    return values
