"""pytest plugin: running simulators of Reply.io and Whippy and Airflow connections to them.

Installed with the package (entry point ``pytest11``), so these fixtures are available in any
project that installs the provider::

    def test_my_dag(reply_connection, reply_simulator, reply_account):
        ...  # hooks and operators using conn id "reply_default" now talk to the simulator
        assert reply_simulator.enrolments == {...}

Simulator options come from a marker on the test or module::

    @pytest.mark.reply_simulator(time_scale=60, contact_limit=10)
    @pytest.mark.whippy_simulator(processing_delay=0.2, behaviour="observed")

Behaviour (``documented``: the reference docs; ``observed``: what the services' own clients
report the real servers do): a marker's ``behaviour`` wins; otherwise the simulators take the
``simulator_behaviour`` fixture, which is the command-line option
``--simulator-behaviour=documented|observed|both`` (``both`` runs every test that uses a
simulator once under each). A module can run its tests under both itself::

    pytestmark = pytest.mark.parametrize("simulator_behaviour", BEHAVIOURS)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from airflow_provider_sequences.testing.accounts import (
    ReplyAccount,
    WhippyAccount,
    connection_env_var,
    connection_json,
    seed_reply_account,
    seed_whippy_account,
    simulator_connection_extra,
)
from airflow_provider_sequences.testing.behaviour import (
    BEHAVIOURS,
    DEFAULT_BEHAVIOUR,
    Behaviour,
    check_behaviour,
)

if TYPE_CHECKING:
    from airflow_provider_sequences.testing.reply import ReplySimulator
    from airflow_provider_sequences.testing.whippy import WhippySimulator


BEHAVIOUR_OPTION = "--simulator-behaviour"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        BEHAVIOUR_OPTION,
        choices=[*BEHAVIOURS, "both"],
        default=DEFAULT_BEHAVIOUR,
        help="how the Reply and Whippy simulators answer: as documented, as the services' own "
        "clients observe, or both (each test that uses a simulator runs once per behaviour)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reply_simulator(**options): options for the Reply simulator fixture (behaviour=...)"
    )
    config.addinivalue_line(
        "markers", "whippy_simulator(**options): options for the Whippy simulator fixture (behaviour=...)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # "both": run each test that reaches a simulator under each behaviour, unless the test
    # chose its behaviours itself.
    if metafunc.config.getoption(BEHAVIOUR_OPTION, DEFAULT_BEHAVIOUR) != "both":
        return
    if "simulator_behaviour" not in metafunc.fixturenames:
        return
    if any("simulator_behaviour" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return
    metafunc.parametrize("simulator_behaviour", BEHAVIOURS)


@pytest.fixture
def simulator_behaviour(request: pytest.FixtureRequest) -> Behaviour:
    """The behaviour the simulator fixtures use when their marker does not say
    (``--simulator-behaviour``; parametrize this name to choose per test or module)."""
    return check_behaviour(str(request.config.getoption(BEHAVIOUR_OPTION, DEFAULT_BEHAVIOUR)))


def _options(request: pytest.FixtureRequest, name: str, behaviour: Behaviour) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    options = dict(marker.kwargs) if marker else {}
    options.setdefault("behaviour", behaviour)
    return options


@pytest.fixture
def reply_simulator(
    request: pytest.FixtureRequest, simulator_behaviour: Behaviour
) -> Iterator[ReplySimulator]:
    """A running Reply.io simulator on loopback (options: ``@pytest.mark.reply_simulator``)."""
    from airflow_provider_sequences.testing.reply import ReplySimulator

    with ReplySimulator(**_options(request, "reply_simulator", simulator_behaviour)) as sim:
        yield sim  # type: ignore[misc]


@pytest.fixture
def reply_account(reply_simulator: ReplySimulator) -> ReplyAccount:
    """A user, its key and a sequence in the running Reply simulator."""
    return seed_reply_account(reply_simulator)


@pytest.fixture
def reply_connection(
    reply_simulator: ReplySimulator, reply_account: ReplyAccount, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Connection ``reply_default`` pointing at the simulator with the account's key."""
    extra = simulator_connection_extra(reply_simulator.time_scale)
    monkeypatch.setenv(
        connection_env_var("reply_default"),
        connection_json("reply", reply_simulator.url, reply_account.api_key, **extra),
    )
    return "reply_default"


@pytest.fixture
def whippy_simulator(
    request: pytest.FixtureRequest, simulator_behaviour: Behaviour
) -> Iterator[WhippySimulator]:
    """A running Whippy simulator on loopback (options: ``@pytest.mark.whippy_simulator``)."""
    from airflow_provider_sequences.testing.whippy import WhippySimulator

    with WhippySimulator(**_options(request, "whippy_simulator", simulator_behaviour)) as sim:
        yield sim  # type: ignore[misc]


@pytest.fixture
def whippy_account(whippy_simulator: WhippySimulator) -> WhippyAccount:
    """A key, a channel and two sequences in the running Whippy simulator."""
    return seed_whippy_account(whippy_simulator)


@pytest.fixture
def whippy_connection(
    whippy_simulator: WhippySimulator, whippy_account: WhippyAccount, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Connection ``whippy_default`` pointing at the simulator with the account's key."""
    extra = simulator_connection_extra(whippy_simulator.time_scale)
    monkeypatch.setenv(
        connection_env_var("whippy_default"),
        connection_json("whippy", whippy_simulator.url, whippy_account.api_key, **extra),
    )
    return "whippy_default"
