"""Simulators of the Reply.io and Whippy APIs, for tests, demos and offline development.

Each simulator is a real HTTP server on loopback, as strict as the APIs' documentation:
authentication, validation, rate limits with 429s, per-item errors, and Whippy's background
work and silent ignores. Start one in-process::

    from airflow_provider_sequences.testing import ReplySimulator, seed_reply_account

    with ReplySimulator() as sim:
        account = seed_reply_account(sim)
        ...  # point a "reply" connection's host at sim.url, its password at account.api_key

or from a shell: ``python -m airflow_provider_sequences.testing --help``. With pytest, the
fixtures of :mod:`airflow_provider_sequences.testing.pytest_plugin` do the wiring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_sequences.testing.accounts import (
    REPLY_TEST_KEY,
    WHIPPY_TEST_KEY,
    ReplyAccount,
    WhippyAccount,
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
)
from airflow_provider_sequences.testing.faults import FaultPlan, RequestRecord

if TYPE_CHECKING:
    from airflow_provider_sequences.testing.reply import ReplySimulator
    from airflow_provider_sequences.testing.whippy import WhippySimulator

__all__ = [
    "REPLY_TEST_KEY",
    "WHIPPY_TEST_KEY",
    "FaultPlan",
    "ReplyAccount",
    "ReplySimulator",
    "RequestRecord",
    "WhippyAccount",
    "WhippySimulator",
    "connection_env_var",
    "connection_json",
    "seed_reply_account",
    "seed_whippy_account",
]


def __getattr__(name: str) -> Any:
    # The simulators import FastAPI; load them only when asked for.
    if name == "ReplySimulator":
        from airflow_provider_sequences.testing.reply import ReplySimulator

        return ReplySimulator
    if name == "WhippySimulator":
        from airflow_provider_sequences.testing.whippy import WhippySimulator

        return WhippySimulator
    raise AttributeError(name)
