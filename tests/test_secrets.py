"""The API key never leaves the connection.

Both operators run for real (``dag.test()``) with DEBUG logging and a distinctive fake key,
through retries (an injected 500 and 429) and a failing run with a wrong key; then every place
a key could leak is searched: captured log lines (pytest's and the process's own output), task
log files, exception text, XCom, the sync state (every table), the rendered template fields,
the Airflow metadata database file and the simulators' request logs dumped to disk.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sequences.testing import (
    ReplySimulator,
    WhippySimulator,
    connection_env_var,
    connection_json,
)
from airflow_provider_sequences.testing.accounts import seed_reply_account, seed_whippy_account
from airflow_provider_sequences.testing.dags import load_dag, run_dag, task_states, task_xcom
from tests.dag_files import REPLY_OPERATOR, WHIPPY_OPERATOR, write_operator_dag

REPLY_KEY = "sk-live-LEAKCHECK-reply-7f3a9c1e5b2d"
WHIPPY_KEY = "sk-live-LEAKCHECK-whippy-4e8b0d6a2c9f"
WRONG_KEY = "sk-live-LEAKCHECK-wrong-1a2b3c4d5e6f"
#: Any part of any key long enough to identify it.
LEAK = re.compile(r"LEAKCHECK|7f3a9c1e5b2d|4e8b0d6a2c9f|1a2b3c4d5e6f")
STATE_CONN = "secrets_state"
TASK = "enrol"


def _leaks(text: str) -> list[str]:
    return [text[max(m.start() - 80, 0) : m.end() + 80] for m in LEAK.finditer(text)]


def _state_dump(path: Path) -> str:
    """Every row of every table of the sync state, as text."""
    with sqlite3.connect(path) as connection:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "sequence_sync_state" in tables
        return "\n".join(
            repr(row)
            for table in tables
            for row in connection.execute(f'SELECT * FROM "{table}"')  # noqa: S608
        )


def _rendered_fields(dag_run: Any) -> str:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(RenderedTaskInstanceFields).where(
                RenderedTaskInstanceFields.dag_id == dag_run.dag_id,
                RenderedTaskInstanceFields.run_id == dag_run.run_id,
            )
        ).all()
        assert rows, "the task's rendered template fields were not stored"
        return "\n".join(json.dumps(row.rendered_fields, default=str) for row in rows)


def _files_text(folder: Path) -> str:
    texts = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix not in (".db", ".db-wal", ".db-shm"):
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


@pytest.fixture
def debug_logging(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("airflow", "airflow.task", "airflow_provider_sequences", "urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def test_no_key_leaks_from_either_operator(
    dags_folder: Path,
    airflow_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug_logging: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", "DEBUG")
    state_db = tmp_path / "state.db"
    monkeypatch.setenv(
        connection_env_var(STATE_CONN), json.dumps({"conn_type": "sqlite", "host": str(state_db)})
    )
    seen: list[str] = []
    with (
        ReplySimulator(enforce_rate_limits=False) as reply,
        WhippySimulator(enforce_rate_limits=False) as whippy,
    ):
        reply_account = seed_reply_account(reply, api_key=REPLY_KEY)
        whippy_account = seed_whippy_account(whippy, api_key=WHIPPY_KEY)
        monkeypatch.setenv(
            connection_env_var("reply_default"), connection_json("reply", reply.url, REPLY_KEY)
        )
        monkeypatch.setenv(
            connection_env_var("whippy_default"), connection_json("whippy", whippy.url, WHIPPY_KEY)
        )
        monkeypatch.setenv(connection_env_var("reply_wrong"), connection_json("reply", reply.url, WRONG_KEY))
        runs = []
        # Reply: a retried 500 and 429, a rejected row, templated fields.
        reply.faults.force("server_error", "rate_limit")
        write_operator_dag(
            dags_folder,
            "secrets_reply",
            REPLY_OPERATOR,
            task_id=TASK,
            params={"sequence_id": reply_account.sequence_id},
            sequence_id="{{ params.sequence_id }}",
            contacts=[
                {"id": "1", "email": "ada@example.com", "first": "Ada"},
                {"id": "2", "email": "grace@example.com", "first": "Grace"},
                {"id": "3", "email": "not-an-email", "first": "Typo"},
            ],
            column_map={"email": "email", "first": "firstName"},
            key_column="id",
            state_conn_id=STATE_CONN,
        )
        runs.append(run_dag(load_dag("secrets_reply", dags_folder)))
        # Whippy: a retried 500, then the read-back.
        whippy.faults.force("server_error")
        write_operator_dag(
            dags_folder,
            "secrets_whippy",
            WHIPPY_OPERATOR,
            task_id=TASK,
            sequence_id=whippy_account.sequence_id,
            contacts=[{"id": "w1", "phone": "+14155550101"}, {"id": "w2", "phone": "call me"}],
            column_map={"phone": "phone"},
            key_column="id",
            state_conn_id=STATE_CONN,
            poll_interval=0.05,
            enrollment_timeout=10.0,
        )
        runs.append(run_dag(load_dag("secrets_whippy", dags_folder)))
        # A wrong key: the task fails, and its error names neither key.
        write_operator_dag(
            dags_folder,
            "secrets_wrong_key",
            REPLY_OPERATOR,
            task_id=TASK,
            reply_conn_id="reply_wrong",
            sequence_id=reply_account.sequence_id,
            contacts=[{"id": "1", "email": "ada@example.com"}],
            column_map={"email": "email"},
            key_column="id",
            state_conn_id=STATE_CONN,
        )
        runs.append(run_dag(load_dag("secrets_wrong_key", dags_folder)))

        reply.faults.dump_log(tmp_path / "reply_requests.jsonl")
        whippy.faults.dump_log(tmp_path / "whippy_requests.jsonl")

    assert [task_states(run)[TASK] for run in runs] == ["success", "success", "failed"]
    results = [task_xcom(run, TASK) for run in runs[:2]]
    assert results[0]["added"] == ["1", "2"]
    assert results[1]["added"] == ["w1"]
    # The retries happened, so their log lines were among those searched.
    assert any(r.fault == "server_error" for r in reply.requests)
    assert any(r.fault == "server_error" for r in whippy.requests)

    output = capfd.readouterr()
    seen.append(output.out + output.err)
    seen.append("\n".join(record.getMessage() for record in debug_logging.records))
    seen.append(
        "\n".join(
            str(record.exc_info[1])
            for record in debug_logging.records
            if record.exc_info and record.exc_info[1]
        )
    )
    seen.append(json.dumps(results))
    seen.append(_state_dump(state_db))
    seen.extend(_rendered_fields(run) for run in runs)
    seen.append((tmp_path / "reply_requests.jsonl").read_text())
    seen.append((tmp_path / "whippy_requests.jsonl").read_text())
    seen.append(_files_text(airflow_db / "logs") if (airflow_db / "logs").exists() else "")
    # The metadata database as raw bytes: XComs, task instances, logs, anything stored.
    assert (airflow_db / "airflow.db").exists()
    for name in ("airflow.db", "airflow.db-wal"):
        if (airflow_db / name).exists():
            seen.append((airflow_db / name).read_bytes().decode("utf-8", "replace"))

    # The searches found what they were looking in: the wrong key's failure was logged.
    assert "401" in seen[0] + seen[1]
    assert "the API key is missing, wrong or revoked" in seen[0] + seen[1]
    assert "Syncing into Reply.io sequence" in seen[0] + seen[1]
    assert _leaks(f"x {REPLY_KEY} {WHIPPY_KEY} {WRONG_KEY}")  # the search would see a leak
    leaks = [leak for text in seen for leak in _leaks(text)]
    assert leaks == []


@pytest.mark.parametrize("operator", [REPLY_OPERATOR, WHIPPY_OPERATOR])
def test_operator_refuses_plain_http_to_a_remote_host(operator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    module, _, name = operator.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    service = "reply" if "reply" in module else "whippy"
    monkeypatch.setenv(
        connection_env_var(f"{service}_default"),
        connection_json(service, "http://api.example.com", REPLY_KEY),
    )
    kwargs: dict[str, Any] = {
        "task_id": "enrol",
        "sequence_id": "1001",
        "contacts": [{"id": "1", "email": "ada@example.com", "phone": "+14155550101"}],
        "column_map": {"email": "email"} if service == "reply" else {"phone": "phone"},
        "key_column": "id",
    }

    class _TI:
        dag_id, task_id, map_index = "secrets", "enrol", -1

    with pytest.raises(ValueError, match=r"refusing plain http to api\.example\.com") as raised:
        cls(**kwargs).execute({"ti": _TI(), "run_id": "r"})
    assert not _leaks(str(raised.value))


# -- redirects, the connection's host, bad keys: what may leave for another address --------------

SERVICES = ("reply", "whippy")
#: The acting user goes with every Reply request, as the key does.
ACTING_USER = "boss-LEAKCHECK@example.com"


def _hook(service: str, host: str, key: str, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Any:
    from airflow_provider_sequences.hooks.reply import ReplyHook
    from airflow_provider_sequences.hooks.whippy import WhippyHook

    extra.setdefault("max_attempts", 1)
    if service == "reply":
        extra.setdefault("acting_user_email", ACTING_USER)
    monkeypatch.setenv(connection_env_var(f"{service}_default"), connection_json(service, host, key, **extra))
    return ReplyHook() if service == "reply" else WhippyHook()


def _write(service: str, hook: Any) -> Any:
    """The write that carries people: Reply's bulk add, Whippy's create-sequence-contacts."""
    if service == "reply":
        return hook.add_contacts_to_sequence(1001, [1, 2])
    return hook.create_sequence_contacts("seq_1", [{"phone": "+14155550123"}])


def _no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("service", SERVICES)
def test_a_redirect_to_another_origin_is_refused_and_nothing_reaches_it(
    service: str, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_sequences.exceptions import SequencesApiError
    from tests.http_stub import Answer, StubServer

    _no_proxy_settings(monkeypatch)
    key = REPLY_KEY if service == "reply" else WHIPPY_KEY
    with StubServer(host="127.0.0.2") as other:
        target = f"{other.url}/collect?token=abc"
        with StubServer(lambda seen: Answer(status, headers={"Location": target})) as stub:
            hook = _hook(service, stub.url, key, monkeypatch)
            with pytest.raises(SequencesApiError) as caught:
                _write(service, hook)
            assert len(stub.seen) == 1
        assert other.seen == [], "the redirect was followed"
    assert caught.value.code == "redirectRefused"
    assert caught.value.status == status
    assert f"127.0.0.2:{other.port}" in str(caught.value)
    assert "token" not in str(caught.value)
    assert not _leaks(str(caught.value))


def test_a_redirect_to_plain_http_elsewhere_never_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes to a non-loopback host passes the (loopback) proxy here: it sees nothing."""
    from airflow_provider_sequences.exceptions import SequencesApiError
    from tests.http_stub import Answer, StubServer

    _no_proxy_settings(monkeypatch)
    with StubServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        location = {"Location": "http://collector.example/steal"}
        with StubServer(lambda seen: Answer(302, headers=location)) as stub:
            hook = _hook("whippy", stub.url, WHIPPY_KEY, monkeypatch)
            with pytest.raises(SequencesApiError, match=r"redirected to http://collector\.example"):
                hook.list_channels()
            assert len(stub.seen) == 1
        assert proxy.seen == [], "a request left for the plain-http address"


def test_proxy_credentials_and_the_acting_user_do_not_follow_a_redirect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proxy (which answers for the service here) redirects: nothing is sent again."""
    from airflow_provider_sequences.exceptions import SequencesApiError
    from tests.http_stub import Answer, StubServer

    _no_proxy_settings(monkeypatch)
    with StubServer(host="127.0.0.2") as other:
        location = {"Location": f"{other.url}/collect"}
        with StubServer(lambda seen: Answer(307, headers=location)) as proxy:
            proxy_url = f"http://proxyuser:proxy-LEAKCHECK-pass@127.0.0.1:{proxy.port}"
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.setenv("http_proxy", proxy_url)
            hook = _hook("reply", "http://127.0.0.1:9", REPLY_KEY, monkeypatch)
            with pytest.raises(SequencesApiError) as caught:
                _write("reply", hook)
            assert len(proxy.seen) == 1, [seen.path for seen in proxy.seen]
            assert "Proxy-Authorization" in proxy.seen[0].headers  # the proxy was really used
        assert other.seen == []
    assert not _leaks(str(caught.value))


def test_credentials_in_the_connection_host_are_refused_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow_provider_sequences.hooks.reply import ReplyHook
    from tests.http_stub import StubServer, json_answer

    _no_proxy_settings(monkeypatch)
    with StubServer(lambda seen: json_answer({"userId": 7})) as stub:
        host = f"http://someone:host-LEAKCHECK-pass@127.0.0.1:{stub.port}"
        hook = _hook("reply", host, REPLY_KEY, monkeypatch)
        with pytest.raises(ValueError, match="user name or password") as caught:
            hook.whoami()
        ok, message = ReplyHook().test_connection()
        assert stub.seen == []
    assert not ok
    assert not _leaks(str(caught.value))
    assert "someone" not in str(caught.value)
    assert not _leaks(message)
    assert "someone" not in message


@pytest.mark.parametrize(
    "host", ["http://10.1.2.3:80\\@127.0.0.1", "http://collector.example\\@127.0.0.1:8080"]
)
def test_a_backslash_cannot_pass_another_host_for_loopback(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_sequences.hooks.base import resolve_base_url

    with pytest.raises(ValueError, match="backslash"):
        resolve_base_url(host, None, "https://api.reply.io", "/v3")
    ok, message = _hook("reply", host, REPLY_KEY, monkeypatch).test_connection()
    assert not ok
    assert "backslash" in message


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    "key",
    [
        "sk-live-LEAKCHECK-a\nX-Injected: 1",
        "sk-live-\r\nLEAKCHECK-b",
        "sk-live LEAKCHECK-c",
        "sk-live-LEAKCHECK-d\x00",
        "sk-live-LEAKCHECK-e\t1",
    ],
    ids=["newline", "crlf", "space", "nul", "tab"],
)
def test_a_key_with_spaces_or_control_characters_is_refused_without_showing_it(
    service: str, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.http_stub import StubServer, json_answer

    _no_proxy_settings(monkeypatch)
    with StubServer(lambda seen: json_answer({"userId": 7, "data": [], "total": 0})) as stub:
        hook = _hook(service, stub.url, key, monkeypatch)
        with pytest.raises(ValueError, match="spaces or control characters") as caught:
            hook.check_credentials()
        ok, message = hook.test_connection()
        assert stub.seen == []
    assert not ok
    assert not _leaks(str(caught.value))
    assert not _leaks(message)


def test_an_acting_user_with_a_line_break_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.http_stub import StubServer, json_answer

    _no_proxy_settings(monkeypatch)
    with StubServer(lambda seen: json_answer({"userId": 7})) as stub:
        hook = _hook(
            "reply",
            stub.url,
            REPLY_KEY,
            monkeypatch,
            acting_user_email="boss-LEAKCHECK@example.com\nX-Evil: 1",
        )
        with pytest.raises(ValueError, match="X-User-Email") as caught:
            hook.whoami()
        assert stub.seen == []
    assert not _leaks(str(caught.value))
