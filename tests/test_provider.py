"""Airflow discovers the provider, its connection types and their forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_providers_manager_knows_the_provider_and_its_hooks() -> None:
    from airflow.providers_manager import ProvidersManager

    assert "airflow-provider-sequences" in ProvidersManager().providers
    try:
        # Hooks are the task runtime's from Airflow 3.2 (ProvidersManager.hooks is deprecated).
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

        hooks = ProvidersManagerTaskRuntime().hooks
    except ImportError:  # Airflow 3.1
        hooks = ProvidersManager().hooks
    assert hooks["reply"].hook_class_name == "airflow_provider_sequences.hooks.reply.ReplyHook"
    assert hooks["reply"].connection_id_attribute_name == "reply_conn_id"
    assert hooks["whippy"].hook_class_name == "airflow_provider_sequences.hooks.whippy.WhippyHook"
    # One display name per service: the UI's (provider info) and the hook's.
    assert hooks["reply"].hook_name == "Reply.io"
    assert hooks["whippy"].hook_name == "Whippy"


def _declarative_forms() -> bool:
    """Whether this Airflow builds connection forms from provider info's conn-fields (3.2 on)."""
    import inspect

    import airflow.providers_manager

    return "conn-fields" in inspect.getsource(airflow.providers_manager)


@pytest.mark.skipif(not _declarative_forms(), reason="Airflow 3.1 has no declarative connection forms")
def test_connection_forms_declare_key_url_limits_and_acting_user() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    widgets = manager.connection_form_widgets
    for field in (
        "acting_user_id",
        "acting_user_email",
        "acting_team_id",
        "requests_per_minute",
        "requests_per_hour",
    ):
        assert f"extra__reply__{field}" in widgets
    for field in ("sequence_writes_per_minute", "requests_per_second", "timeout"):
        assert f"extra__whippy__{field}" in widgets
    behaviours = manager.field_behaviours
    for conn_type in ("reply", "whippy"):
        assert behaviours[conn_type]["relabeling"] == {"host": "Base URL", "password": "API key"}
        assert "login" in behaviours[conn_type]["hidden_fields"]


@pytest.mark.parametrize("command", ["list", "hooks"])
def test_airflow_cli_lists_the_provider(command: str) -> None:
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    result = subprocess.run(
        [airflow, "providers", command, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    # Airflow may log a line before the JSON; the JSON is the line that starts a list.
    rows = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("[{")))
    if command == "list":
        ours = [r for r in rows if r["package_name"] == "airflow-provider-sequences"]
        assert len(ours) == 1
        assert ours[0]["description"].startswith("Enrol contacts")
    else:
        classes = {r["connection_type"]: r["class"] for r in rows}
        assert classes["reply"] == "airflow_provider_sequences.hooks.reply.ReplyHook"
        assert classes["whippy"] == "airflow_provider_sequences.hooks.whippy.WhippyHook"


def test_the_sync_engine_imports_no_airflow() -> None:
    """The engine is plain Python and pandas (docs/architecture.md): it runs and benchmarks alone."""
    code = (
        "import sys, airflow_provider_sequences.sync.engine, airflow_provider_sequences.sync.contract\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_0_1_0_path_of_read_sync_state_still_works_and_says_where_it_went() -> None:
    sys.modules.pop("airflow_provider_sequences.state", None)
    with pytest.warns(DeprecationWarning, match="sync_state"):
        from airflow_provider_sequences.state import read_sync_state
    from airflow_provider_sequences.sync_state import read_sync_state as current

    assert read_sync_state is current
