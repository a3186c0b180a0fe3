"""The Sequence syncs view, served by Airflow's own api-server app (``create_app``, in process),
on a state written by real DAG runs against the Reply simulator.

Two DAGs sync into one sequence: ``ui_visible_nightly`` over two nights and
``ui_secret_nightly`` once. The user ``admin`` reads both DAGs; ``viewer`` may not read the
secret one (tests/ui_auth_manager.py). ``ui_revealed_nightly``, whose operator sets
``reveal_values``, syncs the same rows into a second sequence.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_provider_sequences.testing import ReplySimulator, connection_env_var, connection_json
from airflow_provider_sequences.testing.accounts import seed_reply_account
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_xcom
from tests.dag_files import REPLY_OPERATOR, write_operator_dag
from tests.ui_auth_manager import HIDDEN_DAG

VISIBLE_DAG = "ui_visible_nightly"
REVEALED_DAG = "ui_revealed_nightly"
STATE_CONN = "ui_state"
TASK = "enrol"
# Shaped like an email, refused by the prepare stage (no dot in the domain): the view must mask it.
PERSONAL_BAD = "ada.lovelace@example"


def _contacts(night: int) -> list[dict[str, Any]]:
    rows = [{"email": f"lead{i}@example.com", "first_name": f"Lead {i}"} for i in range(8)]
    rows += [
        {"email": PERSONAL_BAD, "first_name": "Ada"},
        {"email": "not-an-email", "first_name": "Typo"},
    ]
    if night == 2:
        rows[-1] = {"email": "typo.fixed@example.com", "first_name": "Typo"}
        rows += [{"email": f"new{i}@example.com", "first_name": f"New {i}"} for i in range(3)]
    return rows


@dataclass
class Nights:
    """What the tasks returned (XCom), by DAG and night, and the scope they wrote."""

    results: dict[tuple[str, int], dict[str, Any]]
    run_keys: dict[tuple[str, int], str]
    scope: dict[str, str]
    #: The second sequence, written by the run that may show its values.
    revealed_scope: dict[str, str]


@pytest.fixture(scope="module")
def nights(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nights]:
    import airflow.settings

    folder = tmp_path_factory.mktemp("ui-dags")
    state_db = tmp_path_factory.mktemp("ui-state") / "state.db"
    saved_env = dict(os.environ)
    saved_folder = airflow.settings.DAGS_FOLDER
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(folder)
    airflow.settings.DAGS_FOLDER = str(folder)
    os.environ[connection_env_var(STATE_CONN)] = json.dumps({"conn_type": "sqlite", "host": str(state_db)})
    try:
        with ReplySimulator() as sim:
            account = seed_reply_account(sim)
            os.environ[connection_env_var("reply_default")] = connection_json(
                "reply", sim.url, account.api_key
            )
            revealed_sequence = sim.add_sequence("Revealed", owner_user_id=account.user_id)
            results: dict[tuple[str, int], dict[str, Any]] = {}
            keys: dict[tuple[str, int], str] = {}
            for dag_id, night in ((VISIBLE_DAG, 1), (VISIBLE_DAG, 2), (HIDDEN_DAG, 1), (REVEALED_DAG, 1)):
                revealed: dict[str, Any] = {"reveal_values": True} if dag_id == REVEALED_DAG else {}
                write_operator_dag(
                    folder,
                    dag_id,
                    REPLY_OPERATOR,
                    task_id=TASK,
                    sequence_id=revealed_sequence if revealed else account.sequence_id,
                    state_conn_id=STATE_CONN,
                    column_map={"email": "email", "first_name": "firstName"},
                    contacts=_contacts(night),
                    max_not_processed_share=None,
                    **revealed,
                )
                dag_run = run_dag(load_dag(dag_id, folder))
                results[(dag_id, night)] = task_xcom(dag_run, TASK)
                keys[(dag_id, night)] = f"{dag_id}.{TASK}[-1]:{dag_run.run_id}"
            # The state is kept per account, which the hook names as the operator did.
            from airflow_provider_sequences.hooks.reply import ReplyHook

            reply_account = ReplyHook().account
        scope = {"service": "reply", "account": reply_account, "sequence": str(account.sequence_id)}
        yield Nights(results, keys, scope, {**scope, "sequence": str(revealed_sequence)})
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        airflow.settings.DAGS_FOLDER = saved_folder


@pytest.fixture(scope="module")
def client(nights: Nights) -> Iterator[Any]:
    """Airflow's api-server app with the view, reading this module's state connection."""
    from fastapi.testclient import TestClient

    saved_env = dict(os.environ)
    os.environ.update(
        {
            "AIRFLOW__CORE__AUTH_MANAGER": "tests.ui_auth_manager.OneDagHiddenAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__SEQUENCES__UI_STATE_CONN_IDS": STATE_CONN,
            "AIRFLOW__API_AUTH__JWT_SECRET": "test-secret-for-the-sequence-syncs-view",
        }
    )
    from airflow.api_fastapi.app import create_app

    try:
        with TestClient(create_app("core")) as test_client:
            yield test_client
    finally:
        os.environ.clear()
        os.environ.update(saved_env)


def _login(client: Any, username: str) -> None:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=username, role="admin"))
    client.cookies.clear()
    client.cookies.set(COOKIE_NAME_JWT_TOKEN, token)


def _chart_values(page: str, run_key: str) -> dict[str, int]:
    """series -> value of the outcomes chart's bar for this run."""
    chart = page[page.index('id="outcomes-chart"') : page.index("</svg>")]
    found: dict[str, int] = {}
    for attrs in re.findall(r"<rect ([^>]*)>", chart):
        values = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', attrs))
        if values.get("data-run") == run_key.replace("&", "&amp;"):
            found[values["data-series"]] = int(values["data-value"])
    return found


def _reasons(result: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in result["not_processed"].values():
        counts[outcome["reason"]] = counts.get(outcome["reason"], 0) + 1
    return counts


def test_every_endpoint_refuses_requests_without_a_logged_in_user(client, nights):
    run_key = nights.run_keys[(VISIBLE_DAG, 1)]
    paths = [
        ("/sequence-syncs/", {}),
        ("/sequence-syncs/sequence", nights.scope),
        ("/sequence-syncs/sequence.csv", {**nights.scope, "run": run_key}),
        ("/sequence-syncs/key", {"key": "lead1@example.com"}),
        ("/sequence-syncs/openapi.json", {}),
        ("/sequence-syncs/docs", {}),
    ]
    client.cookies.clear()
    for path, params in paths:
        answer = client.get(path, params=params)
        assert answer.status_code in (401, 403), (path, answer.status_code)
        assert "lead" not in answer.text
        forged = client.get(path, params=params, headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code in (401, 403), (path, forged.status_code)


def test_the_chart_and_the_runs_table_show_each_nights_figures(client, nights):
    _login(client, "admin")
    index = client.get("/sequence-syncs/")
    assert index.status_code == 200, index.text
    assert f">{nights.scope['sequence']}</a>" in index.text

    page = client.get("/sequence-syncs/sequence", params=nights.scope)
    assert page.status_code == 200
    for key in [(VISIBLE_DAG, 1), (VISIBLE_DAG, 2), (HIDDEN_DAG, 1)]:
        result, run_key = nights.results[key], nights.run_keys[key]
        stats = result["stats"]
        expected = {"added": stats["added"], "unchanged": stats.get("unchanged", 0)}
        expected |= {f"not_processed:{reason}": n for reason, n in _reasons(result).items()}
        assert _chart_values(page.text, run_key) == {k: v for k, v in expected.items() if v}
        row = page.text[page.text.index(f'data-run="{run_key}">') :].split("</tr>")[0]
        cells = re.findall(r'<td class="n[^"]*">([^<]*)</td>', row)
        assert cells[:6] == [
            f"{stats['rows']:,}",
            f"{stats['added']:,}",
            f"{stats['not_processed']:,}",
            f"{stats.get('unchanged', 0):,}",
            f"{stats['duplicates']:,}",
            f"{stats['requests']:,}",
        ]
    # Night one: 8 added, 2 refused; night two: 4 new, 8 unchanged, the one still bad refused.
    assert nights.results[(VISIBLE_DAG, 1)]["stats"]["added"] == 8
    assert nights.results[(VISIBLE_DAG, 2)]["stats"]["unchanged"] == 8


def test_a_runs_not_processed_rows_are_masked_filterable_and_downloadable(client, nights):
    _login(client, "admin")
    # The state keeps each key's latest outcome: the last run refused the bad rows again, so
    # they are its rows now (an earlier run's table lists the keys no later run touched).
    run_key = nights.run_keys[(HIDDEN_DAG, 1)]
    page = client.get("/sequence-syncs/sequence", params={**nights.scope, "run": run_key})
    table = page.text[page.text.index('id="not-processed-rows"') :].split("</table>")[0]
    assert PERSONAL_BAD not in page.text
    assert "a\u2022\u2022\u2022@example" in table
    assert "invalidEmail" in table
    assert "not-an-email" in table
    earlier = client.get(
        "/sequence-syncs/sequence", params={**nights.scope, "run": nights.run_keys[(VISIBLE_DAG, 1)]}
    )
    assert "invalidEmail" not in earlier.text[earlier.text.index('id="not-processed-rows"') :]

    only = client.get(
        "/sequence-syncs/sequence", params={**nights.scope, "run": run_key, "key_prefix": "not-"}
    )
    rows = only.text[only.text.index('id="not-processed-rows"') :].split("</table>")[0]
    assert "not-an-email" in rows
    assert "\u2022" not in rows

    download = client.get("/sequence-syncs/sequence.csv", params={**nights.scope, "run": run_key})
    assert download.status_code == 200
    lines = list(csv.DictReader(io.StringIO(download.text)))
    assert PERSONAL_BAD not in download.text
    assert {line["reason"] for line in lines} == {"invalidEmail"}
    assert len(lines) >= 1


def test_a_keys_history_shows_its_row_and_runs(client, nights):
    _login(client, "admin")
    page = client.get("/sequence-syncs/key", params={"key": "lead1@example.com"})
    assert page.status_code == 200
    assert "lead1@example.com" not in page.text
    assert "added" in page.text
    assert nights.run_keys[(VISIBLE_DAG, 1)] in page.text


def test_the_sync_report_link_opens_the_view_at_the_tasks_run(client, nights):
    from airflow.models.taskinstancekey import TaskInstanceKey

    from airflow_provider_sequences.links import SyncReportLink
    from airflow_provider_sequences.operators.reply import ReplyAddContactsToSequenceOperator

    run_key = nights.run_keys[(VISIBLE_DAG, 2)]
    dag_run_id = run_key.split("]:", 1)[1]
    operator = ReplyAddContactsToSequenceOperator(
        task_id=TASK, sequence_id=nights.scope["sequence"], contacts=[], column_map={"email": "email"}
    )
    # Airflow computes the link on the worker once the task ran, when the account is known.
    assert SyncReportLink().get_link(operator, ti_key=None) == ""
    operator.sync_account = nights.scope["account"]
    link = SyncReportLink().get_link(
        operator, ti_key=TaskInstanceKey(dag_id=VISIBLE_DAG, task_id=TASK, run_id=dag_run_id, map_index=-1)
    )
    parts = urlsplit(link)
    assert parts.path == "/sequence-syncs/sequence"
    assert parse_qs(parts.query)["run"] == [run_key]
    _login(client, "admin")
    page = client.get(parts.path, params={k: v[0] for k, v in parse_qs(parts.query).items()})
    assert page.status_code == 200
    assert f'<tr class="selected" data-run="{run_key}">' in page.text
    assert f"Not processed in run {run_key}" in page.text


def test_a_user_sees_only_runs_of_dags_they_may_read(client, nights):
    _login(client, "viewer")
    hidden = nights.run_keys[(HIDDEN_DAG, 1)]
    page = client.get("/sequence-syncs/sequence", params=nights.scope)
    assert page.status_code == 200
    assert nights.run_keys[(VISIBLE_DAG, 2)] in page.text
    assert hidden not in page.text
    assert client.get("/sequence-syncs/sequence", params={**nights.scope, "run": hidden}).status_code == 404
    assert (
        client.get("/sequence-syncs/sequence.csv", params={**nights.scope, "run": hidden}).status_code == 404
    )
    # The admin sees the hidden DAG's run.
    _login(client, "admin")
    assert hidden in client.get("/sequence-syncs/sequence", params=nights.scope).text


def test_the_view_reads_only_configured_state_databases(client, nights):
    _login(client, "admin")
    answer = client.get("/sequence-syncs/", params={"state": "reply_default"})
    assert answer.status_code == 404


def _cell(row: str, name: str) -> str:
    """The text of the runs table's cell of this class in ``row``."""
    found = re.search(rf'<td class="n {name}">([^<]*)</td>', row)
    assert found is not None, (name, row)
    return found.group(1)


def test_each_run_shows_its_requests_against_the_rate_limit_floor(client, nights):
    _login(client, "admin")
    page = client.get("/sequence-syncs/sequence", params=nights.scope)
    chart = page.text[page.text.index('id="pace-chart"') :].split("</svg>")[0]
    for key in [(VISIBLE_DAG, 1), (VISIBLE_DAG, 2), (HIDDEN_DAG, 1)]:
        stats, run_key = nights.results[key]["stats"], nights.run_keys[key]
        row = page.text[page.text.index(f'data-run="{run_key}">') :].split("</tr>")[0]
        writes, reads = (int(n.replace(",", "")) for n in _cell(row, "pace").split(" / "))
        # The requests the run made, the account's preflight reads included.
        assert writes == stats["write_requests"]
        assert writes + reads == stats["requests"]
        seconds = float(_cell(row, "seconds").replace(",", ""))
        floor = float(_cell(row, "floor").replace(",", ""))
        # A handful of requests: Reply's 100 a minute allow them at once.
        assert floor == 0.0
        # Shown to a tenth of a second: a run of three rows may take less than 0.05 s.
        assert 0 <= seconds < 120
        assert f'data-run="{run_key}" data-value="0"' in chart.replace("&amp;", "&")


def test_the_floor_is_the_least_time_the_services_limits_allow(monkeypatch):
    from airflow_provider_sequences.hooks.reply import ReplyHook
    from airflow_provider_sequences.hooks.whippy import WhippyHook

    monkeypatch.setenv(
        connection_env_var("reply_default"), connection_json("reply", "http://127.0.0.1:9", "k")
    )
    monkeypatch.setenv(
        connection_env_var("whippy_default"), connection_json("whippy", "http://127.0.0.1:9", "k")
    )
    reply = ReplyHook()
    # 100 a minute and 3,000 an hour: the 301st request leaves 3 minutes after the first.
    reply.request_counts.update({"GET all": 1, "POST all": 300})
    assert reply.floor_seconds() == 180.0
    assert reply.floor_seconds(since={"GET all": 1, "POST all": 200}) == 0.0
    whippy = WhippyHook()
    # 10 sequence writes a minute bind long before 25 requests a second do.
    whippy.request_counts.update({"POST time_consuming": 21, "GET standard": 500})
    assert whippy.floor_seconds() == 120.0


def test_values_are_shown_only_for_runs_whose_operator_said_so(client, nights):
    _login(client, "admin")
    revealed = client.get("/sequence-syncs/sequence", params=nights.revealed_scope)
    table = revealed.text[revealed.text.index('id="not-processed-rows"') :].split("</table>")[0]
    assert PERSONAL_BAD in table
    download = client.get(
        "/sequence-syncs/sequence.csv",
        params={**nights.revealed_scope, "run": nights.run_keys[(REVEALED_DAG, 1)]},
    )
    assert PERSONAL_BAD in download.text
    # The same rows in the other sequence, written by operators that did not: masked.
    masked = client.get("/sequence-syncs/sequence", params=nights.scope)
    assert PERSONAL_BAD not in masked.text
    assert "a\u2022\u2022\u2022@example" in masked.text
    # A key's page: each sequence's detail as its last run allows.
    key = client.get("/sequence-syncs/key", params={"key": PERSONAL_BAD})
    assert key.text.count(PERSONAL_BAD) == 1
