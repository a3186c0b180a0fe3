"""Ready-made accounts in the simulators and the Airflow connections that reach them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_sequences.testing.reply import ReplySimulator
    from airflow_provider_sequences.testing.whippy import WhippySimulator

#: Fake keys: the simulators accept exactly these; no real service ever would.
REPLY_TEST_KEY = "reply-simulator-key"
WHIPPY_TEST_KEY = "whippy-simulator-key"


@dataclass
class ReplyAccount:
    """A Reply user with a team key and one active three-step sequence."""

    api_key: str
    user_id: int
    sequence_id: int


@dataclass
class WhippyAccount:
    """A Whippy organization with a phone channel, an SMS sequence and an email sequence."""

    api_key: str
    channel_phone: str
    sequence_id: str
    email_sequence_id: str


def seed_reply_account(sim: ReplySimulator, api_key: str = REPLY_TEST_KEY) -> ReplyAccount:
    """Create a user, its key and a sequence named "Nightly onboarding"."""
    user_id = sim.add_user("owner@example.com")
    sim.add_api_key(api_key, user_id=user_id)
    sequence_id = sim.add_sequence("Nightly onboarding", owner_user_id=user_id, steps=3)
    return ReplyAccount(api_key=api_key, user_id=user_id, sequence_id=sequence_id)


def seed_whippy_account(sim: WhippySimulator, api_key: str = WHIPPY_TEST_KEY) -> WhippyAccount:
    """Create a key, a phone channel, an SMS sequence and an email sequence."""
    sim.add_api_key(api_key)
    phone = "+15555550100"
    sim.add_channel(phone=phone, name="Sales line")
    sms = sim.add_sequence("Nightly onboarding (SMS)", steps=["sms", "sms"])
    email = sim.add_sequence("Nightly onboarding (email)", steps=["email"])
    return WhippyAccount(api_key=api_key, channel_phone=phone, sequence_id=sms, email_sequence_id=email)


def connection_json(conn_type: str, url: str, api_key: str, **extra: Any) -> str:
    """An Airflow connection in JSON form, for an ``AIRFLOW_CONN_<ID>`` environment variable."""
    return json.dumps({"conn_type": conn_type, "host": url, "password": api_key, "extra": extra})


def connection_env_var(conn_id: str) -> str:
    """The environment variable Airflow reads connection ``conn_id`` from."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def simulator_connection_extra(time_scale: float) -> dict[str, Any]:
    """Extras that keep a hook's client-side limits in step with a time-scaled simulator."""
    return {} if time_scale == 1 else {"rate_limit_time_scale": time_scale}
