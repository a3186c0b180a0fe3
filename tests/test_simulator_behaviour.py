"""The simulators' behaviour switch: constructor, pytest marker and fixture, command line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_provider_sequences.testing import ReplySimulator, WhippySimulator
from airflow_provider_sequences.testing.__main__ import _parser
from airflow_provider_sequences.testing.base import BEHAVIOURS


def test_the_constructors_take_a_behaviour_and_refuse_unknown_ones() -> None:
    assert BEHAVIOURS == ("documented", "observed")
    assert ReplySimulator().behaviour == "documented"
    assert ReplySimulator(behaviour="observed").observed
    assert WhippySimulator(behaviour="observed").behaviour == "observed"
    with pytest.raises(ValueError, match="behaviour must be one of documented, observed, not 'real'"):
        ReplySimulator(behaviour="real")  # type: ignore[arg-type]


def test_the_default_is_documented(reply_simulator: ReplySimulator) -> None:
    assert reply_simulator.behaviour == "documented"


@pytest.mark.reply_simulator(behaviour="observed")
def test_the_marker_chooses_the_behaviour(reply_simulator: ReplySimulator) -> None:
    assert reply_simulator.behaviour == "observed"


@pytest.mark.parametrize("simulator_behaviour", BEHAVIOURS)
def test_a_test_can_run_under_both(
    simulator_behaviour: str, reply_simulator: ReplySimulator, whippy_simulator: WhippySimulator
) -> None:
    assert reply_simulator.behaviour == simulator_behaviour
    assert whippy_simulator.behaviour == simulator_behaviour


def test_the_command_line_flag() -> None:
    assert _parser().parse_args(["reply"]).behaviour == "documented"
    assert _parser().parse_args(["reply", "--behaviour", "observed"]).behaviour == "observed"


def test_the_pytest_option_runs_a_suite_under_both(tmp_path: Path) -> None:
    test = tmp_path / "test_users_own.py"
    test.write_text(
        textwrap.dedent(
            """
            def test_enrol(reply_simulator):
                print("behaviour:", reply_simulator.behaviour)
            """
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test),
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "--simulator-behaviour=both",
            "--rootdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "behaviour: documented" in done.stdout
    assert "behaviour: observed" in done.stdout
    assert "2 passed" in done.stdout
